//! Matrix transposes: weights re-laid out at load (`(out, in)` to `(in, out)`), and the
//! 16 x 16 register transpose the AMX attention uses to pack keys.

/// `src` row-major `(rows, cols)` transposed to `(cols, rows)`, over rayon in bands of 16
/// output rows. With AVX-512 each 16 x 16 tile is transposed in registers (about 3x the scalar
/// loop's bandwidth, which was a third of the time to load a float32 model); elsewhere, and at
/// ragged edges, element by element.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    transpose_with(src, rows, cols, super::cpu::simd() == super::cpu::Simd::Avx512)
}

fn transpose_with(src: &[f32], rows: usize, cols: usize, avx512: bool) -> Vec<f32> {
    use rayon::prelude::*;
    const B: usize = 16;
    assert_eq!(src.len(), rows * cols, "transpose: {} values for a {rows} x {cols} matrix", src.len());
    let mut dst = super::uninit::<f32>(rows * cols);
    dst.par_chunks_mut(B * rows).enumerate().for_each(|(band, out)| {
        let c0 = band * B;
        let width = out.len() / rows.max(1);
        let mut r0 = 0;
        #[cfg(target_arch = "x86_64")]
        if avx512 && width == B {
            while r0 + B <= rows {
                // SAFETY: the CPU has AVX-512F; the tile reads rows r0..r0+16, columns c0..c0+16
                // of `src` and writes columns r0..r0+16 of the band's 16 rows, all in bounds.
                unsafe {
                    transpose_tile16(src.as_ptr().add(r0 * cols + c0), cols, out.as_mut_ptr().add(r0).cast(), rows)
                };
                r0 += B;
            }
        }
        for r in r0..rows {
            let row = &src[r * cols + c0..r * cols + c0 + width];
            for (j, &v) in row.iter().enumerate() {
                out[j * rows + r].write(v);
            }
        }
    });
    // SAFETY: every (column, row) pair was written once above.
    unsafe { super::assume_init(dst) }
}

/// `src` row-major `(rows, cols)` transposed into the first `rows` columns of `dst`'s `cols`
/// rows at stride `dst_stride` (one thread; 16 x 16 register tiles with AVX-512, element by
/// element elsewhere and at ragged edges).
pub(crate) fn transpose_into(src: &[f32], rows: usize, cols: usize, dst: &mut [f32], dst_stride: usize) {
    const B: usize = 16;
    assert!(src.len() >= rows * cols && rows <= dst_stride, "transpose_into: source size");
    assert!(cols == 0 || dst.len() >= (cols - 1) * dst_stride + rows, "transpose_into: destination size");
    let (full_r, full_c) =
        if super::cpu::simd() == super::cpu::Simd::Avx512 { (rows / B * B, cols / B * B) } else { (0, 0) };
    #[cfg(target_arch = "x86_64")]
    for r0 in (0..full_r).step_by(B) {
        for c0 in (0..full_c).step_by(B) {
            // SAFETY: AVX-512F; rows r0..r0+16, columns c0..c0+16 of `src` and rows c0..c0+16,
            // columns r0..r0+16 of `dst` lie inside them (sizes checked above).
            unsafe {
                transpose_tile16(
                    src.as_ptr().add(r0 * cols + c0),
                    cols,
                    dst.as_mut_ptr().add(c0 * dst_stride + r0),
                    dst_stride,
                )
            };
        }
    }
    for r in 0..rows {
        let c_start = if r < full_r { full_c } else { 0 };
        for c in c_start..cols {
            dst[c * dst_stride + r] = src[r * cols + c];
        }
    }
}

/// [`transpose_tile16`] on 32-bit patterns (pairs of bf16): the shuffles move bits unchanged.
///
/// # Safety
/// AVX-512F; `src` holds 16 rows of 16 values at stride `src_stride`, `dst` 16 writable rows
/// of 16 at stride `dst_stride`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn transpose_tile16_bits(src: *const u32, src_stride: usize, dst: *mut u32, dst_stride: usize) {
    transpose_tile16(src.cast(), src_stride, dst.cast(), dst_stride)
}

/// The first `rows` rows and `cols` columns of the transposed 16 x 16 tile at `src` (32-bit
/// values: float32, or pairs of bf16 moved as bits) written to `dst` at row stride
/// `dst_stride`: straight when the whole tile is wanted, through a tile on the stack when not.
///
/// # Safety
/// AVX-512F; `src` holds 16 rows of 16 values at stride `src_stride`, `dst` `rows` writable
/// rows of `cols` (both at most 16) at stride `dst_stride`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn transpose_tile16_part<T: Copy>(
    src: *const T,
    src_stride: usize,
    dst: *mut T,
    dst_stride: usize,
    rows: usize,
    cols: usize,
) {
    const { assert!(std::mem::size_of::<T>() == 4, "32-bit values") };
    debug_assert!(rows <= 16 && cols <= 16);
    if rows == 16 && cols == 16 {
        transpose_tile16(src.cast(), src_stride, dst.cast(), dst_stride);
        return;
    }
    let mut tile = [0f32; 256];
    transpose_tile16(src.cast(), src_stride, tile.as_mut_ptr(), 16);
    for r in 0..rows {
        std::ptr::copy_nonoverlapping(tile.as_ptr().add(16 * r).cast::<T>(), dst.add(r * dst_stride), cols);
    }
}

/// A 16 x 16 float32 tile from `src` (row stride `src_stride`) to `dst` transposed (row stride
/// `dst_stride`): three rounds of unpack/shuffle, the usual in-register transpose.
///
/// # Safety
/// AVX-512F; `src` holds 16 rows of 16 values at stride `src_stride`, `dst` 16 writable rows
/// of 16 at stride `dst_stride`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn transpose_tile16(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    let mut r = [_mm512_setzero_ps(); 16];
    for (i, v) in r.iter_mut().enumerate() {
        *v = _mm512_loadu_ps(src.add(i * src_stride));
    }
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let (lo, hi) = (
        |a, b| _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))),
        |a, b| _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))),
    );
    for i in 0..4 {
        let a = 4 * i;
        r[a] = lo(t[a], t[a + 2]);
        r[a + 1] = hi(t[a], t[a + 2]);
        r[a + 2] = lo(t[a + 1], t[a + 3]);
        r[a + 3] = hi(t[a + 1], t[a + 3]);
    }
    for i in 0..2 {
        for j in 0..4 {
            let (a, b) = (8 * i + j, 8 * i + j + 4);
            t[a] = _mm512_shuffle_f32x4::<0x88>(r[a], r[b]);
            t[b] = _mm512_shuffle_f32x4::<0xdd>(r[a], r[b]);
        }
    }
    for j in 0..8 {
        r[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[j + 8]);
        r[j + 8] = _mm512_shuffle_f32x4::<0xdd>(t[j], t[j + 8]);
    }
    for (i, v) in r.iter().enumerate() {
        _mm512_storeu_ps(dst.add(i * dst_stride), *v);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose_matches_the_definition() {
        for (rows, cols) in [(1, 1), (3, 70), (64, 32), (100, 33), (37, 48), (768, 2304), (1024, 4096)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let simd = cfg!(target_arch = "x86_64") && is_x86_feature_detected!("avx512f");
            for avx512 in [false, simd] {
                let t = super::transpose_with(&src, rows, cols, avx512);
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(t[c * rows + r], src[r * cols + c], "{rows} x {cols}, avx512 {avx512}");
                    }
                }
            }
        }
    }
}
