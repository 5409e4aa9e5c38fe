//! GIF as Pillow opens it for the transform: the first frame as a palette (`P`) image, so its
//! transparent index keeps its palette colour under `convert("RGB")` (Pillow ignores
//! transparency there) and the resize is NEAREST. The `gif` crate decodes the indices; the
//! palette lookup is ours.

use std::io::Cursor;

use super::Pixels;
use crate::error::{Error, Result};

/// The first frame of a GIF as 8-bit RGB on the logical screen. Pixels outside the first frame
/// take the transparent index's colour if the frame has one, else index 0's.
pub(crate) fn decode(bytes: &[u8], max_pixels: u64) -> Result<Pixels> {
    let bad = |e: gif::DecodingError| Error::ImageDecode(format!("GIF: {e}"));
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    options
        .set_memory_limit(gif::MemoryLimit::Bytes(max_pixels.max(1).try_into().unwrap_or(std::num::NonZeroU64::MIN)));
    let mut decoder = options.read_info(Cursor::new(bytes)).map_err(bad)?;
    let (width, height) = (decoder.width() as usize, decoder.height() as usize);
    let global = decoder.global_palette().map(<[u8]>::to_vec);
    let frame = decoder.read_next_frame().map_err(bad)?.ok_or_else(|| Error::ImageDecode("GIF: no frame".into()))?;
    let palette = frame
        .palette
        .as_deref()
        .or(global.as_deref())
        .ok_or_else(|| Error::ImageDecode("GIF: the first frame has no colour table".into()))?;
    let colour = |i: u8| {
        let at = i as usize * 3;
        palette.get(at..at + 3).map_or([0, 0, 0], |c| [c[0], c[1], c[2]])
    };
    let fill = colour(frame.transparent.unwrap_or(0));
    let mut data: Vec<u8> = std::iter::repeat_n(fill, width * height).flatten().collect();
    let (left, top, fw) = (frame.left as usize, frame.top as usize, frame.width as usize);
    for (r, row) in frame.buffer.chunks_exact(fw.max(1)).enumerate() {
        let y = top + r;
        if y >= height {
            break;
        }
        for (c, &index) in row.iter().enumerate() {
            let x = left + c;
            if x < width {
                data[(y * width + x) * 3..][..3].copy_from_slice(&colour(index));
            }
        }
    }
    Ok(Pixels { width, height, channels: 3, data })
}
