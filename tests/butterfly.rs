//! The Keras LSTM tutorial, reproduced: `lstmc run` with no model trains the
//! built-in stateful LSTM (2000 epochs, seed 0) on the nursery rhyme; as the
//! tutorial found, it reaches 100% and generates all 50 notes of the song from
//! its first four.

mod common;

use common::lstmc_ok;

#[test]
fn the_builtin_stateful_example_learns_the_whole_song() {
    let stdout = lstmc_ok(
        &["run", "--json", "--quiet", "--threads", "1"],
        std::path::Path::new("."),
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // One line per epoch, then the evaluation, then the play-back.
    assert_eq!(
        lines.iter().filter(|l| l.get("epoch").is_some()).count(),
        2000
    );
    let eval = lines.iter().find_map(|l| l.get("evaluate")).unwrap();
    assert_eq!(eval["accuracy"].as_f64(), Some(1.0), "{eval}");
    let play = lines.iter().find(|l| l.get("song").is_some()).unwrap();
    assert_eq!(play["song_notes_right"].as_u64(), Some(50), "{play}");
    let song: Vec<&str> = play["song"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(song, lstmc::data::BUTTERFLY);
}
