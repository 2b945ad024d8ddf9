//! The Keras LSTM tutorial, reproduced: `lstmc run` with no model trains the
//! built-in stateful LSTM (2000 epochs, seed 0) on the nursery rhyme; as the
//! tutorial found, it reaches 100% and generates all 50 notes of the song from
//! its first four.

use std::process::Command;

#[test]
fn the_builtin_stateful_example_learns_the_whole_song() {
    let out = Command::new(env!("CARGO_BIN_EXE_lstmc"))
        .args(["run", "--json", "--quiet", "--threads", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
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
