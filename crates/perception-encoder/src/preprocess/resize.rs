//! Pillow's resampling, bit for bit: `Image.resize(size, BILINEAR)` (an antialiasing
//! convolution in 8-bit fixed point, horizontal pass first) and `NEAREST` (which Pillow uses
//! for palette and 1-bit images whatever filter is asked for).

/// An 8-bit interleaved image, `channels` bytes per pixel, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes per pixel (1 = L, 2 = LA, 3 = RGB, 4 = RGBA).
    pub channels: usize,
    /// `height * width * channels` bytes.
    pub data: Vec<u8>,
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output position: first input index, tap count, and fixed-point weights (`ksize` each).
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    ksize: usize,
}

/// Pillow's `precompute_coeffs` with the bilinear (triangle) filter, normalized to sum to 1:
/// per output position the first input index, the tap count, and `ksize` double weights.
fn coeffs_f64(in_size: usize, out_size: usize) -> (Vec<(usize, usize)>, Vec<f64>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support 1.0
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0f64; out_size * ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let k = &mut weights[xx * ksize..xx * ksize + n];
        let mut ww = 0.0;
        for (x, p) in k.iter_mut().enumerate() {
            let t = ((x + xmin) as f64 - center + 0.5) * ss;
            *p = (1.0 - t.abs()).max(0.0);
            ww += *p;
        }
        if ww != 0.0 {
            k.iter_mut().for_each(|p| *p /= ww);
        }
        bounds.push((xmin, n));
    }
    (bounds, weights, ksize)
}

/// Pillow's 16-bit resampling (`_ImagingResample*_16bpc`, used for `I;16`): double weights,
/// `(int)(sum + 0.5)`, clipped to 0..=65535; horizontal pass first, each skipped when its
/// size does not change.
pub fn resize_bilinear_16(src: &[u16], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<u16> {
    let round = |ss: f64| (if ss >= 0.0 { ss + 0.5 } else { ss - 0.5 }) as i64;
    let clip = |v: i64| v.clamp(0, 65535) as u16;
    let mut cur = src.to_vec();
    let mut cw = w;
    if out_w != w {
        let (bounds, k, ksize) = coeffs_f64(w, out_w);
        let mut out = vec![0u16; h * out_w];
        for y in 0..h {
            let row = &cur[y * w..(y + 1) * w];
            for (xx, &(xmin, n)) in bounds.iter().enumerate() {
                let ss: f64 = (0..n).map(|x| row[xmin + x] as f64 * k[xx * ksize + x]).sum();
                out[y * out_w + xx] = clip(round(ss));
            }
        }
        cur = out;
        cw = out_w;
    }
    if out_h != h {
        let (bounds, k, ksize) = coeffs_f64(h, out_h);
        let mut out = vec![0u16; out_h * cw];
        for (yy, &(ymin, n)) in bounds.iter().enumerate() {
            for xx in 0..cw {
                let ss: f64 = (0..n).map(|y| cur[(ymin + y) * cw + xx] as f64 * k[yy * ksize + y]).sum();
                out[yy * cw + xx] = clip(round(ss));
            }
        }
        cur = out;
    }
    cur
}

/// Pillow's `precompute_coeffs` with the bilinear (triangle) filter, then
/// `normalize_coeffs_8bpc` (rounded to fixed point).
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let (bounds, exact, ksize) = coeffs_f64(in_size, out_size);
    let weights = exact
        .iter()
        .map(|&w| {
            let f = w * (1u32 << PRECISION_BITS) as f64;
            if w < 0.0 {
                (f - 0.5) as i32
            } else {
                (f + 0.5) as i32
            }
        })
        .collect();
    Coeffs { bounds, weights, ksize }
}

#[inline]
fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

fn horizontal(src: &Pixels, out_w: usize) -> Pixels {
    let c = coeffs(src.width, out_w);
    let ch = src.channels;
    let mut data = vec![0u8; src.height * out_w * ch];
    for y in 0..src.height {
        let row = &src.data[y * src.width * ch..(y + 1) * src.width * ch];
        let out = &mut data[y * out_w * ch..(y + 1) * out_w * ch];
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
            for b in 0..ch {
                let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                for (x, &w) in k.iter().enumerate() {
                    ss += row[(xmin + x) * ch + b] as i32 * w;
                }
                out[xx * ch + b] = clip8(ss);
            }
        }
    }
    Pixels { width: out_w, height: src.height, channels: ch, data }
}

fn vertical(src: &Pixels, out_h: usize) -> Pixels {
    let c = coeffs(src.height, out_h);
    let ch = src.channels;
    let stride = src.width * ch;
    let mut data = vec![0u8; out_h * stride];
    let mut acc = vec![0i32; stride];
    for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        acc.fill(1 << (PRECISION_BITS - 1));
        for (y, &w) in k.iter().enumerate() {
            let row = &src.data[(ymin + y) * stride..(ymin + y + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * w;
            }
        }
        for (o, &a) in data[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    Pixels { width: src.width, height: out_h, channels: ch, data }
}

/// `Image.resize((out_w, out_h), BILINEAR)`: a pass is skipped when its size does not change.
pub fn resize_bilinear(src: &Pixels, out_w: usize, out_h: usize) -> Pixels {
    let h = if out_w != src.width { horizontal(src, out_w) } else { src.clone() };
    if out_h != h.height {
        vertical(&h, out_h)
    } else {
        h
    }
}

/// `Image.resize((out_w, out_h), NEAREST)`: source index `floor((i + 0.5) * in / out)`.
pub fn resize_nearest(src: &Pixels, out_w: usize, out_h: usize) -> Pixels {
    let ch = src.channels;
    let (sx, sy) = (src.width as f64 / out_w as f64, src.height as f64 / out_h as f64);
    let xs: Vec<usize> = (0..out_w).map(|x| (((x as f64 + 0.5) * sx) as usize).min(src.width - 1)).collect();
    let mut data = Vec::with_capacity(out_w * out_h * ch);
    for y in 0..out_h {
        let iy = (((y as f64 + 0.5) * sy) as usize).min(src.height - 1);
        let row = &src.data[iy * src.width * ch..(iy + 1) * src.width * ch];
        for &ix in &xs {
            data.extend_from_slice(&row[ix * ch..(ix + 1) * ch]);
        }
    }
    Pixels { width: out_w, height: out_h, channels: ch, data }
}

/// Crop a `w x h` window at `(left, top)`; the window must lie inside the image.
pub fn crop(src: &Pixels, left: usize, top: usize, w: usize, h: usize) -> Pixels {
    let ch = src.channels;
    let mut data = Vec::with_capacity(w * h * ch);
    for y in top..top + h {
        data.extend_from_slice(&src.data[(y * src.width + left) * ch..(y * src.width + left + w) * ch]);
    }
    Pixels { width: w, height: h, channels: ch, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_images_stay_constant() {
        let src = Pixels { width: 7, height: 5, channels: 3, data: vec![200; 7 * 5 * 3] };
        for (w, h) in [(3, 2), (16, 9), (7, 5), (1, 1)] {
            let out = resize_bilinear(&src, w, h);
            assert_eq!((out.width, out.height), (w, h));
            assert!(out.data.iter().all(|&v| v == 200));
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(666, 224), (27, 224), (301, 224), (10, 3)] {
            let c = coeffs(i, o);
            for xx in 0..o {
                let s: i32 = c.weights[xx * c.ksize..(xx + 1) * c.ksize].iter().sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= c.ksize as i32, "{i}->{o} at {xx}: {s}");
            }
        }
    }
}
