//! Host-side numeric helpers that generated code reaches through `native`.

/// The softmax gradient of one row: `y · (dy - sum(dy · y))`.
pub fn softmax_grad_row(y: &[f32], dy: &[f32], out: &mut [f32]) {
    let dot: f32 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
    for ((o, &y), &d) in out.iter_mut().zip(y).zip(dy) {
        *o = y * (d - dot);
    }
}

/// Softmax of one row: `exp(x - max) / sum`, in f32 (NaN in, NaN out).
pub fn softmax_row(x: &[f32], y: &mut [f32]) {
    let m = x.iter().fold(
        f32::NEG_INFINITY,
        |m, &v| if v > m || v.is_nan() { v } else { m },
    );
    let mut sum = 0.0f32;
    for (o, &v) in y.iter_mut().zip(x) {
        *o = (v - m).exp();
        sum += *o;
    }
    for o in y.iter_mut() {
        *o /= sum;
    }
}

/// The loss code of `lstmc_loss`'s first argument (generated code passes it as an integer).
pub fn loss_code(kind: crate::model::Loss) -> i64 {
    crate::model::Loss::all()
        .iter()
        .position(|&l| l == kind)
        .map_or(0, |p| p as i64)
}

/// The loss over `rows` rows of `cols` (rows `*_stride` apart in each buffer) and its
/// gradient into `dy`: [`crate::loss::row`] in f64 on each row, then the mean.
#[allow(clippy::too_many_arguments)]
pub fn loss_rows(
    code: i64,
    y: &[f32],
    ys: usize,
    t: &[f32],
    ts: usize,
    dy: &mut [f32],
    dys: usize,
    rows: usize,
    cols: usize,
) -> f32 {
    let kind = crate::model::Loss::all()
        .get(code as usize)
        .copied()
        .unwrap_or(crate::model::Loss::Mse);
    // A training step calls this once per batch (the tutorial's: every 30 us), so rows
    // of up to 64 classes stay on the stack.
    let mut small = [[0.0f64; 64]; 3];
    let mut large = Vec::new();
    let [yr, tr, gr] = if cols <= 64 {
        small.each_mut().map(|b| &mut b[..cols])
    } else {
        large.resize(3 * cols, 0.0f64);
        let (yr, rest) = large.split_at_mut(cols);
        let (tr, gr) = rest.split_at_mut(cols);
        [yr, tr, gr]
    };
    let mut total = 0.0;
    for r in 0..rows {
        for j in 0..cols {
            yr[j] = f64::from(y[r * ys + j]);
            tr[j] = f64::from(t[r * ts + j]);
        }
        total += crate::loss::row(kind, yr, tr, gr, rows as f64);
        for j in 0..cols {
            dy[r * dys + j] = gr[j] as f32;
        }
    }
    (total / rows.max(1) as f64) as f32
}
