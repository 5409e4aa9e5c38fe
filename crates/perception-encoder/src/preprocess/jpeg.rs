//! JPEG decoding with libjpeg-turbo, as Pillow does it: the same library (through the
//! `mozjpeg` crate, whose decoder is libjpeg-turbo's, built from vendored C sources), the same
//! defaults (ISLOW integer IDCT, "fancy" triangular chroma upsampling), so the pixels are
//! Pillow's byte for byte. EXIF orientation is ignored, as in the reference.
//!
//! As Pillow opens them: one component is `L`, three are `RGB` (YCbCr converted by libjpeg), four
//! are `CMYK` with Adobe's inverted values flipped back (Pillow's raw mode `CMYK;I`; libjpeg
//! converts YCCK to CMYK first).

use std::panic::{catch_unwind, AssertUnwindSafe};

use mozjpeg::{Decompress, Format};

use super::Pixels;
use crate::error::{Error, Result};

/// Bytes libjpeg holds per pixel beyond the output: a progressive file keeps every DCT
/// coefficient (2 bytes each, up to 3 full-resolution components) until its last scan.
pub(crate) const WORKING_BYTES_PER_PIXEL: u64 = 6;

/// A decoded JPEG: 8-bit pixels with 1 (L), 3 (RGB) or 4 (CMYK) channels.
pub(crate) struct Jpeg {
    pub(crate) pixels: Pixels,
    pub(crate) cmyk: bool,
}

/// Width, height and component count from the frame header, without decoding.
pub(crate) fn header(bytes: &[u8]) -> Result<(u32, u32, usize)> {
    guarded(|| {
        let d = Decompress::new_mem(bytes)?;
        let (w, h) = d.size();
        Ok((w as u32, h as u32, d.components().len()))
    })
}

/// Decode a whole JPEG from memory.
pub(crate) fn decode(bytes: &[u8]) -> Result<Jpeg> {
    guarded(|| decode_unguarded(bytes))
}

/// Run libjpeg. Its fatal errors unwind (without the panic hook) and are caught here, so a
/// corrupt file is an error, never a panic of the caller.
fn guarded<T>(f: impl FnOnce() -> std::io::Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(j)) => Ok(j),
        Ok(Err(e)) => Err(Error::ImageDecode(format!("JPEG: {e}"))),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("libjpeg failed");
            let msg = msg.trim_start_matches("libjpeg fatal error: ");
            if msg.contains("precision") {
                // Pillow's libjpeg-turbo reads 8-bit samples only, too.
                return Err(Error::ImageDecode(format!("JPEG: {msg}; only 8-bit JPEGs are supported")));
            }
            Err(Error::ImageDecode(format!("JPEG: {msg}")))
        }
    }
}

fn decode_unguarded(bytes: &[u8]) -> std::io::Result<Jpeg> {
    let d = Decompress::new_mem(bytes)?;
    let (width, height) = d.size();
    let (channels, cmyk, data) = match d.image()? {
        Format::Gray(mut s) => {
            let data = s.read_scanlines::<u8>()?;
            s.finish()?;
            (1, false, data)
        }
        Format::RGB(mut s) => {
            let data = s.read_scanlines::<u8>()?;
            s.finish()?;
            (3, false, data)
        }
        Format::CMYK(mut s) => {
            let mut data = s.read_scanlines::<u8>()?;
            s.finish()?;
            // Pillow reads 4-component JPEGs as "CMYK;I": Adobe's convention stores 255 - value.
            data.iter_mut().for_each(|v| *v = 255 - *v);
            (4, true, data)
        }
    };
    if data.len() != width * height * channels {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "fewer scanlines than the header says"));
    }
    Ok(Jpeg { pixels: Pixels { width, height, channels, data }, cmyk })
}

/// Pillow's `CMYK -> RGB`: `255 - k - c * (255 - k) / 255` per channel, with its rounding.
pub(crate) fn cmyk_to_rgb(p: &Pixels) -> Vec<u8> {
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    p.data
        .chunks_exact(4)
        .flat_map(|px| {
            let nk = 255 - u32::from(px[3]);
            [0, 1, 2].map(|c| (nk - muldiv255(u32::from(px[c]), nk)) as u8)
        })
        .collect()
}
