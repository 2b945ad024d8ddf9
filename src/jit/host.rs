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
