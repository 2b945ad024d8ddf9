//! Front end: the Keras-style summary and parameter counts, the grammar's
//! vocabulary against the option table, and robustness on arbitrary input.

use lstmc::front::{self, options};
use proptest::prelude::*;

fn load(src: &str) -> lstmc::model::ModelSpec {
    front::load("t.model", src.as_bytes()).unwrap_or_else(|d| panic!("{}", d.render()))
}

#[test]
fn butterfly_summary_matches_keras() {
    let spec = load(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/butterfly.model"
        ))
        .unwrap(),
    );
    let want = "\
Model: \"butterfly\"
┌────────────────┬──────────────┬─────────┐
│ Layer (type)   │ Output Shape │ Param # │
╞════════════════╪══════════════╪═════════╡
│ lstm (LSTM)    │ (1, 128)     │  66,560 │
├────────────────┼──────────────┼─────────┤
│ dense (Dense)  │ (1, 12)      │   1,548 │
└────────────────┴──────────────┴─────────┘
 Total params: 68,108 (266.05 KB)
 Trainable params: 68,108 (266.05 KB)
 Non-trainable params: 0 (0.00 B)
";
    assert_eq!(spec.summary(), want);
}

#[test]
fn parameter_counts_equal_keras() {
    // Counts as Keras 3's model.summary() gives them.
    let cases = [
        ("LSTM 128 input_dim=1 input_length=4", vec![66_560]),
        ("LSTM 3 input_dim=1 input_length=4 use_bias=false", vec![48]),
        ("GRU 2 input_dim=1 input_length=3", vec![30]), // bias (2, 6)
        (
            "GRU 2 input_dim=1 input_length=3 reset_after=false",
            vec![24],
        ),
        (
            "SimpleRNN 4 input_dim=3 input_length=2 return_sequences\nDense 5",
            vec![32, 25],
        ),
        (
            "Dense 128 input_dim=4 activation=relu\nDense 128 activation=relu\nDense 12",
            vec![640, 16_512, 1_548],
        ),
    ];
    for (src, counts) in cases {
        let spec = load(src);
        let got: Vec<u128> = spec.layers.iter().map(|l| l.param_count()).collect();
        assert_eq!(got, counts, "{src}");
    }
    let gru = load("GRU 2 input_dim=1 input_length=3");
    assert_eq!(
        gru.layers[0].weights()[2].shape,
        vec![2, 6],
        "GRU reset_after has a bias of two rows"
    );
}

#[test]
fn output_shapes_and_names_follow_keras() {
    let spec = load("LSTM 4 input_dim=2 input_length=5 return_sequences\nLSTM 3 return_sequences\nDense 2\nDense 1");
    let shapes: Vec<String> = (0..4).map(|i| spec.output_shape(i).to_string()).collect();
    assert_eq!(
        shapes,
        [
            "(None, 5, 4)",
            "(None, 5, 3)",
            "(None, 5, 2)",
            "(None, 5, 1)"
        ]
    );
    let names: Vec<&str> = spec.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["lstm", "lstm_1", "dense", "dense_1"]);
}

#[test]
fn defaults_are_keras_3s() {
    let spec = load("LSTM 3 input_dim=1 input_length=4\ncompile");
    let l = &spec.layers[0];
    assert_eq!(l.activation, lstmc::model::Activation::Tanh);
    assert_eq!(l.recurrent_activation, lstmc::model::Activation::Sigmoid);
    assert!(
        l.use_bias && l.unit_forget_bias && !l.return_sequences && !l.stateful && !l.go_backwards
    );
    assert!(load("GRU 2 input_dim=1 input_length=4").layers[0].reset_after);
    let c = spec.compile.unwrap();
    assert_eq!(c.loss, lstmc::model::Loss::Mse);
    assert_eq!(
        c.optimizer,
        lstmc::model::Optimizer::Rmsprop {
            learning_rate: 0.001,
            rho: 0.9,
            momentum: 0.0,
            epsilon: 1e-7
        }
    );
}

#[test]
fn comments_continuations_and_strings_parse() {
    let spec = load(
        "# a comment\n\nmodel \"my net\"   # trailing comment\nLSTM 3 input_dim=1 \\\n  input_length=4 \\\n  return_sequences\r\nDense 1\ndata x=\"a \\\"b\\\" \\\\c.npy\" predict=\"p.npy\"\n",
    );
    assert_eq!(spec.name, "my net");
    assert!(spec.layers[0].return_sequences);
    match spec.data.unwrap().source {
        lstmc::model::DataSource::Npy { x, .. } => assert_eq!(x, "a \"b\" \\c.npy"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn grammar_vocabulary_equals_the_option_table() {
    let grammar = include_str!("../grammar/model.pest");
    let start = grammar.find("known_option = @{").unwrap();
    let end = start + grammar[start..].find("~ !ident_char").unwrap();
    let mut in_grammar: Vec<&str> = grammar[start..end].split('"').skip(1).step_by(2).collect();
    let mut in_table: Vec<&str> = options::OPTIONS.iter().map(|o| o.name).collect();
    in_grammar.sort();
    in_table.sort();
    assert_eq!(in_grammar, in_table);
}

#[test]
fn every_option_is_accepted_where_the_table_allows_it() {
    for o in options::OPTIONS {
        let value = match o.ty {
            options::OptType::Count => "2".to_string(),
            options::OptType::Natural => "0".to_string(),
            options::OptType::Bool => "true".to_string(),
            options::OptType::Fraction => "0.5".to_string(),
            options::OptType::Positive | options::OptType::NonNegative => "0.5".to_string(),
            options::OptType::OneOf(names) => {
                names.iter().find(|n| **n != "softmax").unwrap().to_string()
            }
            options::OptType::Str => "\"f.npy\"".to_string(),
        };
        let line = format!("{}={value}", o.name);
        let srcs: Vec<String> = if o.owners & options::LSTM != 0 {
            vec![format!(
                "LSTM 3 input_dim=1 input_length=4 {}",
                if o.name == "input_dim" || o.name == "input_length" {
                    String::new()
                } else {
                    line.clone()
                }
            )]
        } else if o.owners & options::DENSE != 0 {
            vec![format!(
                "Dense 3 input_dim=2 {}",
                if o.name == "input_dim" {
                    String::new()
                } else {
                    line.clone()
                }
            )]
        } else {
            vec![]
        };
        for src in srcs {
            front::load("t.model", src.as_bytes())
                .unwrap_or_else(|d| panic!("{src}: {}", d.render()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes: an error or a model, never a panic; every error's span lies in the text.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Err(d) = front::load("f.model", &bytes) {
            for item in &d.items {
                prop_assert!(item.span.start <= d.source.text.len() + 3);
            }
            let _ = d.render();
        }
    }

    /// Token soup from the language's own vocabulary, which reaches far deeper than random bytes.
    #[test]
    fn token_soup_never_panics(tokens in proptest::collection::vec(prop_oneof![
        Just("LSTM"), Just("GRU"), Just("Dense"), Just("SimpleRNN"), Just("model"), Just("compile"),
        Just("fit"), Just("data"), Just("3"), Just("-1"), Just("0"), Just("1e9"), Just("2.5"), Just("="),
        Just("input_dim=1"), Just("input_length=4"), Just("return_sequences"), Just("stateful"),
        Just("batch_size=2"), Just("activation=softmax"), Just("\"x"), Just("\"a\\q\""), Just("\n"),
        Just("\\\n"), Just("#c\n"), Just("loss=mse"), Just("optimizer=adam"), Just("momentum=0.5"),
        Just("builtin=butterfly"), Just("x=\"a.npy\""), Just("go_backwards"), Just("reset_after"),
    ], 0..30)) {
        let src = tokens.join(" ");
        if let Ok(spec) = front::load("s.model", src.as_bytes()) {
            let _ = spec.summary();
        } else if let Err(d) = front::load("s.model", src.as_bytes()) {
            prop_assert!(!d.items.is_empty());
            let _ = d.render();
        }
    }
}
