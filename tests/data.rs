//! Training data: the tutorial's song and its two encodings, CSV series and
//! rows, and the checks that refuse data that does not fit the model.

use lstmc::data::{self, butterfly, note_code, note_name, Dataset};
use ndarray::{ArrayD, Ix2, IxDyn};
use std::collections::HashMap;

fn spec(src: &str) -> lstmc::model::ModelSpec {
    lstmc::front::load("t.model", src.as_bytes()).unwrap()
}

#[test]
fn the_song_has_50_windows_and_its_codes_are_the_tutorials() {
    let d = butterfly(4, 1).unwrap();
    assert_eq!(d.x.shape(), &[50, 4, 1]);
    let y = d.y.unwrap();
    assert_eq!(y.shape(), &[50, 12]);
    // g8 e8 e4 f8 -> d8: codes 11, 9, 2, 10 -> 8, inputs as code / 13.
    let first: Vec<f64> = d.x.iter().take(4).copied().collect();
    assert_eq!(first, [11.0 / 13.0, 9.0 / 13.0, 2.0 / 13.0, 10.0 / 13.0]);
    let label = y
        .rows()
        .into_iter()
        .next()
        .unwrap()
        .iter()
        .position(|&v| v == 1.0)
        .unwrap();
    assert_eq!(label, 8);
    assert!(
        y.rows().into_iter().all(|r| r.sum() == 1.0),
        "one-hot labels"
    );
    assert_eq!(note_code("b8"), Some(13));
    for c in 0..14 {
        assert_eq!(note_code(&note_name(c).unwrap()), Some(c));
    }
}

#[test]
fn window_only_models_can_reach_at_most_46_of_50() {
    // Windows that repeat with different next notes: the tutorial's 92% ceiling.
    let d = butterfly(4, 1).unwrap();
    let y = d.y.unwrap();
    let mut groups: HashMap<Vec<u64>, HashMap<usize, usize>> = HashMap::new();
    for i in 0..50 {
        let key: Vec<u64> = (0..4).map(|t| d.x[[i, t, 0]].to_bits()).collect();
        let label = (0..12).find(|&c| y[[i, c]] == 1.0).unwrap();
        *groups.entry(key).or_default().entry(label).or_default() += 1;
    }
    let best: usize = groups.values().map(|g| *g.values().max().unwrap()).sum();
    assert_eq!(best, 46);
}

#[test]
fn the_two_feature_encoding_is_scale_and_length() {
    let d = butterfly(4, 2).unwrap();
    assert_eq!(d.x.shape(), &[50, 4, 2]);
    // g8: scale g = 4 -> 4/6, length 8 -> 1; e4: 2/6, 0.
    assert_eq!((d.x[[0, 0, 0]], d.x[[0, 0, 1]]), (4.0 / 6.0, 1.0));
    assert_eq!((d.x[[0, 2, 0]], d.x[[0, 2, 1]]), (2.0 / 6.0, 0.0));
    assert!(butterfly(4, 3).is_err());
}

#[test]
fn builtin_data_loads_through_the_model_and_is_checked() {
    let s = spec("LSTM 8 input_dim=1 input_length=4\nDense 12 activation=softmax\ndata builtin=butterfly window=4 features=1\n");
    let d = data::load(&s, std::path::Path::new(".")).unwrap().unwrap();
    assert_eq!(d.x.shape(), &[50, 4, 1]);
    // The two-feature data does not fit a one-feature model.
    let s2 = spec("LSTM 8 input_dim=1 input_length=4\nDense 12 activation=softmax\ndata builtin=butterfly features=2\n");
    let err = data::load(&s2, std::path::Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("takes inputs shaped (batch, 4, 1); got [50, 4, 2]"),
        "{err}"
    );
    // Labels of 12 classes do not fit a Dense 10.
    let s3 = spec("LSTM 8 input_dim=1 input_length=4\nDense 10\ndata builtin=butterfly\n");
    let err = data::load(&s3, std::path::Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("targets are shaped [50, 12], but the model's output is (N, 10)"),
        "{err}"
    );
}

#[test]
fn csv_series_and_rows() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.csv");
    std::fs::write(&p, "value\n1\n2\n3\n4\n5\n6\n").unwrap();
    let s = spec("LSTM 4 input_dim=1 input_length=3\nDense 1\n");
    let d = data::csv(&p, Some(3), true, &s).unwrap();
    assert_eq!(d.x.shape(), &[3, 3, 1]);
    assert_eq!(
        d.x.iter().copied().collect::<Vec<_>>(),
        [1., 2., 3., 2., 3., 4., 3., 4., 5.]
    );
    assert_eq!(
        d.y.unwrap().iter().copied().collect::<Vec<_>>(),
        [4., 5., 6.]
    );
    // One row: the same series.
    std::fs::write(&p, "1,2,3,4,5,6\n").unwrap();
    let one_row = data::csv(&p, Some(3), false, &s).unwrap();
    assert_eq!(one_row.x.shape(), &[3, 3, 1]);
    assert_eq!(
        one_row.x.iter().copied().collect::<Vec<_>>(),
        [1., 2., 3., 2., 3., 4., 3., 4., 5.]
    );
    // A series of two features: a row per time step, the next row the target.
    std::fs::write(&p, "1,10\n2,20\n3,30\n4,40\n5,50\n").unwrap();
    let s2 = spec("LSTM 4 input_dim=2 input_length=2\nDense 2\n");
    let d2 = data::csv(&p, Some(2), false, &s2).unwrap();
    assert_eq!(d2.x.shape(), &[3, 2, 2]);
    assert_eq!(
        d2.x.iter().copied().collect::<Vec<_>>(),
        [1., 10., 2., 20., 2., 20., 3., 30., 3., 30., 4., 40.]
    );
    let y2 = d2.y.unwrap();
    assert_eq!(y2.shape(), &[3, 2]);
    assert_eq!(
        y2.iter().copied().collect::<Vec<_>>(),
        [3., 30., 4., 40., 5., 50.]
    );
    // Rows of samples: 2 steps x 1 feature, then 1 target.
    std::fs::write(&p, "0.1,0.2,1\n0.3,0.4,0\n").unwrap();
    let s = spec("LSTM 4 input_dim=1 input_length=2\nDense 1\n");
    let d = data::csv(&p, None, false, &s).unwrap();
    assert_eq!(
        d,
        Dataset {
            x: ArrayD::from_shape_vec(IxDyn(&[2, 2, 1]), vec![0.1, 0.2, 0.3, 0.4]).unwrap(),
            y: Some(ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![1.0, 0.0]).unwrap()),
        }
    );
}

#[test]
fn bad_csv_is_refused_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.csv");
    let s = spec("LSTM 4 input_dim=1 input_length=2\nDense 1\n");
    let cases = [
        ("", "holds no data"),
        ("1,2,3\n4,5\n", "b.csv:2: 2 values, but the first row has 3"),
        ("1,2,x\n", "b.csv:1:3: `x` is not a number"),
        ("1,NaN,3\n", "b.csv:1:2: NaN is not finite"),
        ("1,inf,3\n", "b.csv:1:2: inf is not finite"),
        (
            "1,2,3,4\n",
            "each row must hold 2 inputs and 1 targets (3 values); it has 4",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(&p, text).unwrap();
        let err = data::csv(&p, None, false, &s).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
    std::fs::write(&p, "1\n2\n").unwrap();
    let err = data::csv(&p, Some(3), false, &s).unwrap_err().to_string();
    assert!(
        err.contains("2 time steps are too few for windows of 3"),
        "{err}"
    );
}

#[test]
fn npy_data_with_mismatched_counts_is_refused() {
    use ndarray_npy::WriteNpyExt;
    let dir = tempfile::tempdir().unwrap();
    ndarray::Array3::<f32>::zeros((5, 2, 1))
        .write_npy(std::fs::File::create(dir.path().join("x.npy")).unwrap())
        .unwrap();
    ndarray::Array2::<f32>::zeros((4, 1))
        .write_npy(std::fs::File::create(dir.path().join("y.npy")).unwrap())
        .unwrap();
    let s = spec("LSTM 4 input_dim=1 input_length=2\nDense 1\ndata x=\"x.npy\" y=\"y.npy\"\n");
    let err = data::load(&s, dir.path()).unwrap_err().to_string();
    assert!(err.contains("x has 5 samples but y has 4"), "{err}");
}

#[test]
fn a_model_without_time_axis_gets_each_window_as_one_row() {
    let s = spec("Dense 8 input_dim=4 activation=relu\nDense 12 activation=softmax\ndata builtin=butterfly window=4 features=1\n");
    let d = data::load(&s, std::path::Path::new(".")).unwrap().unwrap();
    assert_eq!(d.x.shape(), &[50, 4]);
    let x = d.x.into_dimensionality::<Ix2>().unwrap();
    assert_eq!(
        x.row(0).to_vec(),
        [11.0 / 13.0, 9.0 / 13.0, 2.0 / 13.0, 10.0 / 13.0]
    );
}

/// An `.npy` file's bytes: a version 1.0 header declaring `shape` of float32, then
/// `data` bytes (however many the header declares).
fn npy_bytes(shape: &str, data: usize) -> Vec<u8> {
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((dict.len() as u16).to_le_bytes());
    bytes.extend(dict.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, data));
    bytes
}

#[test]
fn arrays_whose_header_claims_more_than_the_file_holds_are_refused_before_reading() {
    // Before this was checked, the reader allocated what the header declared, and a
    // header of 10^11 rows aborted the process ("memory allocation ... failed").
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.npy");
    // The well-formed file reads.
    std::fs::write(&x, npy_bytes("(3, 4, 1)", 48)).unwrap();
    let a = lstmc::arrays::read(&x, Some("x")).unwrap();
    assert_eq!(a.shape(), &[3, 4, 1]);
    // Cut short by one element; a header of 10^11 rows; one of more rows than u64 holds.
    for (shape, data, want) in [
        ("(3, 4, 1)", 44, "cut short or its header is wrong"),
        (
            "(100000000000, 4, 1)",
            64,
            "declares 400000000000 elements of '<f4'",
        ),
        (
            "(18446744073709551615, 2, 1)",
            64,
            "more elements than any machine holds",
        ),
    ] {
        std::fs::write(&x, npy_bytes(shape, data)).unwrap();
        let err = lstmc::arrays::read(&x, Some("x")).unwrap_err().to_string();
        assert!(
            err.contains("x.npy") && err.contains(want),
            "{shape}: {err}"
        );
    }
    // The same header inside an .npz archive, checked against the entry's size.
    let z = dir.path().join("d.npz");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&z).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("x.npy", stored).unwrap();
    std::io::Write::write_all(&mut zip, &npy_bytes("(100000000000, 4, 1)", 64)).unwrap();
    zip.start_file("y.npy", stored).unwrap();
    std::io::Write::write_all(&mut zip, &npy_bytes("(3, 1)", 12)).unwrap();
    zip.finish().unwrap();
    let err = lstmc::arrays::read(&z, Some("x")).unwrap_err().to_string();
    assert!(
        err.contains("d.npz[x]") && err.contains("cut short"),
        "{err}"
    );
    let y = lstmc::arrays::read(&z, Some("y")).unwrap();
    assert_eq!(y.shape(), &[3, 1]);
    // A deflated entry whose directory claims 512 MB for a stream of a few hundred
    // bytes, with a header to match: refused up front, as deflate inflates at most
    // 1032:1 (the reader allocated the 512 MB, then found the stream short).
    let rows = 128 << 20;
    let header = npy_bytes(&format!("({rows},)"), 0);
    let claimed = (header.len() + 4 * rows) as u32;
    let mut bytes = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut bytes);
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("x.npy", deflated).unwrap();
    std::io::Write::write_all(&mut zip, &npy_bytes(&format!("({rows},)"), 64)).unwrap();
    zip.finish().unwrap();
    let mut bytes = bytes.into_inner();
    // The uncompressed size: at offset 22 of the local header, 24 of the central one.
    for (signature, at) in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)] {
        let start = bytes
            .windows(4)
            .position(|w| w == signature)
            .expect("a zip header");
        bytes[start + at..start + at + 4].copy_from_slice(&claimed.to_le_bytes());
    }
    let z = dir.path().join("forged.npz");
    std::fs::write(&z, &bytes).unwrap();
    let err = lstmc::arrays::read(&z, Some("x")).unwrap_err().to_string();
    assert!(
        err.contains("forged.npz[x]") && err.contains("cut short"),
        "{err}"
    );
}

#[test]
fn files_larger_than_the_machines_memory_are_refused_up_front() {
    let Some(memory) = lstmc::files::memory_bytes() else {
        return; // a system that does not say how much memory it has
    };
    let dir = tempfile::tempdir().unwrap();
    // A sparse file of twice the memory: an honest header, every byte it declares there.
    let rows = memory / 4 / 2 + 1;
    let x = dir.path().join("big.npy");
    let header = npy_bytes(&format!("({rows}, 4, 1)"), 0);
    std::fs::write(&x, &header).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&x).unwrap();
    f.set_len(header.len() as u64 + rows * 16).unwrap();
    let err = lstmc::arrays::read(&x, Some("x")).unwrap_err().to_string();
    assert!(err.contains("more than this machine's"), "{err}");
    // A CSV file, and a model file, larger than the memory: refused before reading.
    let s = spec("LSTM 4 input_dim=1 input_length=2\nDense 1\n");
    let big = dir.path().join("big.csv");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(memory + 1).unwrap();
    let err = data::csv(&big, None, false, &s).unwrap_err().to_string();
    assert!(
        err.contains("big.csv needs") && err.contains("more than this machine's"),
        "{err}"
    );
    let err = lstmc::Model::from_file(&big).unwrap_err().to_string();
    assert!(err.contains("more than this machine's"), "{err}");
    // A short series whose overlapping windows would not fit: L values in windows of
    // L / 2 make L² / 4 values, here more than the memory holds as f64. Before this was
    // checked, a run grew to the machine's memory and was killed.
    let len = (2.2 * (memory as f64 / 8.0).sqrt()) as usize;
    let series = dir.path().join("series.csv");
    std::fs::write(&series, "1\n".repeat(len)).unwrap();
    let err = data::csv(&series, Some(len / 2), false, &s)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("windows of {} time steps", len / 2))
            && err.contains("more than this machine's"),
        "{err}"
    );
}

#[test]
fn compressed_npz_archives_read_as_stored_ones_do() {
    // Written by NumPy: `np.savez_compressed` of x = arange(12) / 4 as (3, 4, 1) and
    // y = the first 3 rows of eye(12), float32; and a deflated entry whose header
    // declares 10^11 rows. Deflated entries used to be refused ("Compression method not
    // supported").
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/npz");
    let z = dir.join("savez_compressed.npz");
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&z).unwrap()).unwrap();
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).unwrap();
        assert_ne!(
            entry.compression(),
            zip::CompressionMethod::Stored,
            "{}",
            entry.name()
        );
    }
    let x = lstmc::arrays::read(&z, Some("x")).unwrap();
    let want = ndarray::Array3::from_shape_fn((3, 4, 1), |(i, t, _)| (i * 4 + t) as f64 * 0.25);
    assert_eq!(x, want.into_dyn());
    let y = lstmc::arrays::read(&z, Some("y")).unwrap();
    assert_eq!(y.shape(), &[3, 12]);
    assert_eq!(y.sum(), 3.0);
    let lie = dir.join("deflated_lie.npz");
    let err = lstmc::arrays::read(&lie, Some("x"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("deflated_lie.npz[x]") && err.contains("cut short"),
        "{err}"
    );
}
