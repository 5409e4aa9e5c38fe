//! The float32 rows a packed (bf16 or int8) product takes as its left operand: as they are, or
//! through the LayerNorm before the product, applied to each row as the kernel rounds or
//! quantizes it. The normalized activations then never exist as a whole: one pass over the
//! residual stream (read it, write the rounded operand) instead of two (write the LayerNorm's
//! float32 output, read it back to round it).

/// A LayerNorm's float32 parameters (one value per feature) and epsilon.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Norm<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub eps: f32,
}

/// `m` rows of `k` float32 values, optionally each through a [`Norm`] as it is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Activations<'a> {
    x: &'a [f32],
    norm: Option<Norm<'a>>,
}

impl<'a> Activations<'a> {
    /// The rows as they are.
    pub(crate) fn plain(x: &'a [f32]) -> Self {
        Activations { x, norm: None }
    }

    /// The rows of `x` each through `norm` (whose vectors are as long as a row).
    pub(crate) fn normed(x: &'a [f32], norm: Norm<'a>) -> Self {
        Activations { x, norm: Some(norm) }
    }

    /// Values in all (`m * k`).
    pub(crate) fn len(&self) -> usize {
        self.x.len()
    }

    /// Row `i` of `k` values: a view of the input, or the normalized row in `scratch`.
    #[inline]
    pub(crate) fn row<'s>(&'s self, i: usize, k: usize, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        let src = &self.x[i * k..(i + 1) * k];
        match self.norm {
            None => src,
            Some(n) => {
                scratch.resize(k, 0.0);
                super::math::layer_norm_row_into(src, scratch, n);
                scratch
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Activations, Norm};
    use crate::kernels::{bf16, int8, math};

    fn rnd(seed: &mut u32) -> f32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 17;
        *seed ^= *seed << 5;
        (*seed as f32 / u32::MAX as f32) * 2.0 - 1.0
    }

    /// Every packed product (each implementation this CPU has, bf16 and int8, and the bf16
    /// MLP) gives the same bits whether the LayerNorm runs as its own pass or on each row as
    /// the kernel takes it.
    #[test]
    fn layer_norm_folded_into_the_operand_changes_no_bit() {
        let mut seed = 0x51ed_2701u32;
        for (m, k, n) in [(1, 64, 32), (7, 40, 70), (37, 96, 128), (130, 33, 64)] {
            // Rows with an offset and a spread, as a residual stream has.
            let x: Vec<f32> = (0..m * k).map(|i| 3.0 * rnd(&mut seed) + (i % k) as f32 * 0.05).collect();
            let weight: Vec<f32> = (0..k).map(|_| 1.0 + 0.5 * rnd(&mut seed)).collect();
            let bias: Vec<f32> = (0..k).map(|_| 0.1 * rnd(&mut seed)).collect();
            let norm = Norm { weight: &weight, bias: &bias, eps: 1e-5 };
            let normed = math::layer_norm(&x, k, &weight, &bias, 1e-5);
            let w: Vec<f32> = (0..n * k).map(|_| rnd(&mut seed)).collect();
            let b: Vec<f32> = (0..n).map(|_| rnd(&mut seed)).collect();

            let packed = bf16::PackedBf16::pack(&w, n, k, Some(&b));
            for (name, which, ok) in bf16::candidates() {
                if ok {
                    let want = bf16::matmul_with(which, Activations::plain(&normed), m, &packed);
                    let got = bf16::matmul_with(which, Activations::normed(&x, norm), m, &packed);
                    assert_eq!(got, want, "bf16 {name} {m}x{k}x{n}");
                }
            }
            let packed = int8::PackedI8::pack(&w, n, k, Some(&b));
            for (name, which, ok) in int8::candidates() {
                if ok {
                    let want = int8::matmul_with(which, Activations::plain(&normed), m, &packed);
                    let got = int8::matmul_with(which, Activations::normed(&x, norm), m, &packed);
                    assert_eq!(got, want, "int8 {name} {m}x{k}x{n}");
                }
            }

            let hidden = 2 * n.div_ceil(32) * 32;
            let w1: Vec<f32> = (0..hidden * k).map(|_| rnd(&mut seed)).collect();
            let w2: Vec<f32> = (0..k * hidden).map(|_| 0.1 * rnd(&mut seed)).collect();
            let b1: Vec<f32> = (0..hidden).map(|_| rnd(&mut seed)).collect();
            let fc = bf16::PackedBf16::pack(&w1, hidden, k, Some(&b1));
            let proj = bf16::PackedBf16::pack(&w2, k, hidden, Some(&bias));
            let want = bf16::mlp(Activations::plain(&normed), m, &fc, &proj);
            assert_eq!(bf16::mlp(Activations::normed(&x, norm), m, &fc, &proj), want, "bf16 MLP {m}x{k}");
        }
    }

    #[test]
    fn a_normed_row_is_the_layer_norm_pass() {
        let x: Vec<f32> = (0..3 * 20).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
        let (w, b) = (vec![1.5f32; 20], vec![0.25f32; 20]);
        let norm = Norm { weight: &w, bias: &b, eps: 1e-5 };
        let a = Activations::normed(&x, norm);
        let mut scratch = Vec::new();
        assert_eq!(a.row(2, 20, &mut scratch), &math::layer_norm(&x, 20, &w, &b, 1e-5)[40..60]);
        assert_eq!(Activations::plain(&x).row(1, 20, &mut scratch), &x[20..40]);
    }
}
