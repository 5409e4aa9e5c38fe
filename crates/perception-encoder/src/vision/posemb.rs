//! Resampling the absolute position embedding to another patch grid, exactly as the
//! reference's `_sample_abs_posemb`: `F.interpolate(mode="bilinear", align_corners=False)`,
//! no antialiasing, on the patch rows only (the class-token row is kept as is).

/// Source index pair and weights of one output coordinate (PyTorch's `upsample_bilinear2d`).
fn taps(dst: usize, in_size: usize, out_size: usize) -> (usize, usize, f32, f32) {
    let scale = in_size as f32 / out_size as f32;
    let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
    let i0 = (src as usize).min(in_size - 1);
    let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
    let l1 = src - i0 as f32;
    (i0, i1, 1.0 - l1, l1)
}

/// Resample a `(grid, grid, width)` row-major table to `(out_h, out_w, width)`.
pub(crate) fn resample(table: &[f32], grid: usize, width: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    let mut out = vec![0f32; out_h * out_w * width];
    for oy in 0..out_h {
        let (y0, y1, wy0, wy1) = taps(oy, grid, out_h);
        for ox in 0..out_w {
            let (x0, x1, wx0, wx1) = taps(ox, grid, out_w);
            let at = |y: usize, x: usize| &table[(y * grid + x) * width..(y * grid + x + 1) * width];
            let (p00, p01, p10, p11) = (at(y0, x0), at(y0, x1), at(y1, x0), at(y1, x1));
            let dst = &mut out[(oy * out_w + ox) * width..(oy * out_w + ox + 1) * width];
            for c in 0..width {
                dst[c] = wy0 * (wx0 * p00[c] + wx1 * p01[c]) + wy1 * (wx0 * p10[c] + wx1 * p11[c]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_at_the_same_size() {
        let t: Vec<f32> = (0..2 * 2 * 3).map(|i| i as f32).collect();
        assert_eq!(resample(&t, 2, 3, 2, 2), t);
    }

    #[test]
    fn upsample_1d_matches_torch() {
        // F.interpolate(torch.tensor([[[[0., 1.]]]]), size=(1, 4), mode="bilinear") = [0, .25, .75, 1]
        let t = [0.0f32, 1.0];
        let g = resample(&[t[0], t[1], t[0], t[1]], 2, 1, 1, 4);
        assert_eq!(g, vec![0.0, 0.25, 0.75, 1.0]);
    }
}
