//! The reference image transform (`get_image_transform` in `core/vision_encoder/transforms.py`):
//! decode, Pillow's bilinear resize ("squash" to `size x size`, or shorter side then a centre
//! crop), `convert("RGB")`, then `(x / 255 - 0.5) / 0.5`.
//!
//! Decoding is by content, not extension: PNG, JPEG, WebP, GIF (first frame), BMP, TIFF.
//! As in Pillow, the resize runs on the image as opened, before the RGB conversion: images with
//! alpha are resized premultiplied, palette and 1-bit images with NEAREST (Pillow's rule).
//!
//! JPEG goes through libjpeg-turbo with Pillow's settings (`jpeg.rs`), so its pixels are
//! Pillow's; CMYK JPEGs are resized in CMYK and then converted with Pillow's formula. A GIF is
//! its first frame as a palette image (`gif.rs`): transparency ignored, as `convert("RGB")` does.
//!
//! 16-bit grayscale follows Pillow by default (resized in 16 bits, then clipped to 255 by
//! `convert("RGB")`, which turns most such images white); [`Gray16::HighByte`] keeps each
//! sample's high byte instead, a deliberate difference on request.

mod gif;
mod jpeg;
pub mod resize;

use std::io::Cursor;
use std::path::Path;

use candle_core::{Device, Tensor};
use image::{ColorType, DynamicImage, ImageFormat, ImageReader};

use crate::config::VisionConfig;
use crate::error::{Error, Result};
pub use resize::Pixels;

/// Pillow's decompression-bomb threshold (`2 * Image.MAX_IMAGE_PIXELS`): larger images are
/// refused unless the limit is raised.
pub const DEFAULT_MAX_PIXELS: u64 = 2 * 89_478_485;

/// How an image is brought to the model's square input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeMode {
    /// Resize to `size x size`, ignoring the aspect ratio (the reference default).
    #[default]
    Squash,
    /// Resize the shorter side to `size`, then crop the centre `size x size`.
    CenterCrop,
}

/// How Pillow would resample an image of this kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// The requested antialiased bilinear filter.
    Bilinear,
    /// Pillow forces NEAREST for palette (`P`) and 1-bit (`1`) images.
    Nearest,
}

/// A decoded image as Pillow would hold it before `convert("RGB")`.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// 8-bit pixels: L, LA, RGB or RGBA.
    pub pixels: Pixels,
    /// The resampling Pillow would apply to it.
    pub resample: Resample,
    /// Four channels are C, M, Y, K (Pillow's mode `CMYK`, from JPEG) rather than RGBA.
    pub cmyk: bool,
    /// The samples of a 16-bit grayscale image (Pillow's mode `I;16`), whose `pixels` then hold
    /// their high bytes; see [`Gray16`].
    pub gray16: Option<Vec<u16>>,
}

/// How a 16-bit grayscale image becomes 8-bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gray16 {
    /// The reference's (Pillow's): resize the 16-bit samples, then `convert("RGB")` clips them
    /// to 255, which turns most such images white.
    #[default]
    Pillow,
    /// Keep each sample's high byte, then resize: the image as it looks. Not the reference's.
    HighByte,
}

impl DecodedImage {
    /// Pillow's `convert("RGB")` of the image as decoded, at full size.
    pub fn to_rgb8(&self) -> Pixels {
        to_rgb(self.pixels.clone(), self.cmyk)
    }
}

/// Read the image header only and refuse images above `max_pixels`.
fn check_size(width: u32, height: u32, max_pixels: u64) -> Result<()> {
    let n = width as u64 * height as u64;
    if n > max_pixels {
        return Err(Error::ImageTooLarge { width, height, limit: max_pixels });
    }
    if n == 0 {
        return Err(Error::ImageDecode(format!("the image has no pixels ({width}x{height})")));
    }
    Ok(())
}

/// What Pillow's mode would be for palette-like sources, which decide the resampling filter.
fn pillow_resample(bytes: &[u8], format: ImageFormat) -> Resample {
    match format {
        // IHDR: colour type at byte 25, bit depth at 24. Palette -> "P"; 1-bit gray -> "1".
        ImageFormat::Png if bytes.len() > 25 && (bytes[25] == 3 || (bytes[25] == 0 && bytes[24] == 1)) => {
            Resample::Nearest
        }
        ImageFormat::Gif => Resample::Nearest,
        // BITMAPINFOHEADER bit count at byte 28: 1, 4 and 8 bits per pixel are palette images.
        ImageFormat::Bmp if bytes.len() > 29 && matches!(u16::from_le_bytes([bytes[28], bytes[29]]), 1 | 4 | 8) => {
            Resample::Nearest
        }
        _ => Resample::Bilinear,
    }
}

/// What an encoded image's header says, read without decoding the pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes decoding and transforming it holds at its peak (the decoded image, one 8-bit copy
    /// of it, and the resize's working rows), so a caller can budget memory before decoding.
    pub decode_bytes: u64,
}

/// The format of an encoded image, from its content, and a reader for it.
fn sniff(bytes: &[u8]) -> Result<(ImageReader<Cursor<&[u8]>>, ImageFormat)> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::ImageDecode(format!("cannot read the image: {e}")))?;
    let format = reader.format().ok_or_else(|| {
        Error::ImageDecode("unrecognized image format (PNG, JPEG, WebP, GIF, BMP and TIFF are supported)".into())
    })?;
    Ok((reader, format))
}

/// Read an image's header: its size and the memory decoding it needs. Refuses unknown formats
/// and images above `max_pixels`, like [`decode`], without allocating for the pixels.
pub fn probe(bytes: &[u8], max_pixels: u64) -> Result<ImageInfo> {
    use image::ImageDecoder;
    let (reader, format) = sniff(bytes)?;
    if format == ImageFormat::Jpeg {
        let (width, height, components) = jpeg::header(bytes)?;
        check_size(width, height, max_pixels)?;
        let per_pixel = components.max(3) as u64 + 4 + jpeg::WORKING_BYTES_PER_PIXEL;
        let decode_bytes = (width as u64 * height as u64).saturating_mul(per_pixel);
        return Ok(ImageInfo { width, height, decode_bytes });
    }
    let decoder = reader.into_decoder().map_err(|e| Error::ImageDecode(format!("{format:?}: {e}")))?;
    let (width, height) = decoder.dimensions();
    check_size(width, height, max_pixels)?;
    let pixels = width as u64 * height as u64;
    let decode_bytes = decoder.total_bytes().saturating_add(pixels.saturating_mul(4));
    Ok(ImageInfo { width, height, decode_bytes })
}

/// Decode an image from memory, refusing images larger than `max_pixels` before decoding them.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<DecodedImage> {
    let (reader, format) = sniff(bytes)?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // Lenient decoders fill a truncated scan with grey; Pillow refuses such files.
        return Err(Error::ImageDecode(
            "the JPEG file is truncated (no end-of-image marker after its scan data)".into(),
        ));
    }
    if format == ImageFormat::Jpeg {
        let (w, h, _) = jpeg::header(bytes)?;
        check_size(w, h, max_pixels)?;
        let j = jpeg::decode(bytes)?;
        return Ok(DecodedImage { pixels: j.pixels, resample: Resample::Bilinear, cmyk: j.cmyk, gray16: None });
    }
    let (w, h) = reader.into_dimensions().map_err(|e| Error::ImageDecode(format!("{format:?}: {e}")))?;
    check_size(w, h, max_pixels)?;
    if format == ImageFormat::Gif {
        let pixels = gif::decode(bytes, max_pixels.saturating_mul(4))?;
        return Ok(DecodedImage { pixels, resample: Resample::Nearest, cmyk: false, gray16: None });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(1 << 26));
    reader.limits(limits);
    if format == ImageFormat::Png {
        png_palette_is_whole(bytes)?;
    }
    // The decoders are other crates'; should one panic on a file fuzzing has not met yet, that
    // file is an error, not the end of the caller.
    let img = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()))
        .map_err(|_| Error::ImageDecode(format!("{format:?}: the decoder failed on this file")))?
        .map_err(|e| Error::ImageDecode(format!("{format:?}: {e}")))?;
    let resample = pillow_resample(bytes, format);
    let (width, height) = (img.width() as usize, img.height() as usize);
    let (channels, data) = match img.color() {
        ColorType::L8 => (1, img.into_luma8().into_raw()),
        ColorType::La8 => (2, img.into_luma_alpha8().into_raw()),
        ColorType::Rgb8 => (3, img.into_rgb8().into_raw()),
        ColorType::Rgba8 => (4, img.into_rgba8().into_raw()),
        // 16-bit samples keep their high byte (Pillow's unpacking of 16-bit RGB PNGs).
        ColorType::L16 => {
            let samples = img.into_luma16().into_raw();
            let pixels = Pixels { width, height, channels: 1, data: samples.iter().map(|v| (v >> 8) as u8).collect() };
            return Ok(DecodedImage { pixels, resample, cmyk: false, gray16: Some(samples) });
        }
        ColorType::La16 => (2, high_bytes(img.into_luma_alpha16().into_raw())),
        ColorType::Rgb16 => (3, high_bytes(img.into_rgb16().into_raw())),
        ColorType::Rgba16 => (4, high_bytes(img.into_rgba16().into_raw())),
        c if c.has_alpha() => (4, DynamicImage::into_rgba8(img).into_raw()),
        _ => (3, img.into_rgb8().into_raw()),
    };
    Ok(DecodedImage { pixels: Pixels { width, height, channels, data }, resample, cmyk: false, gray16: None })
}

/// A PLTE chunk holds whole RGB entries (at most 256). The `png` crate (0.18.1) indexes past a
/// palette whose length is not a multiple of 3 and panics; such a file is refused here, as the
/// PNG specification says it must be. Found by fuzzing (`crates/pe-fuzz`).
fn png_palette_is_whole(bytes: &[u8]) -> Result<()> {
    let mut at = 8;
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        match &head[4..8] {
            b"PLTE" if !len.is_multiple_of(3) || len > 768 => {
                return Err(Error::ImageDecode(format!(
                    "PNG: the palette (PLTE) holds {len} bytes, not whole RGB entries (at most 256)"
                )));
            }
            b"IDAT" | b"IEND" => break,
            _ => {}
        }
        at = at.saturating_add(12).saturating_add(len);
    }
    Ok(())
}

/// Whether an end-of-image marker follows the first start-of-scan. Inside entropy-coded data
/// every 0xFF byte is stuffed, so `FF D9` there can only be the real marker; thumbnails in
/// APP segments come before the scan and cannot fool the check.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).position(|w| w == [0xFF, 0xDA]) else { return false };
    bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

fn high_bytes(v: Vec<u16>) -> Vec<u8> {
    v.into_iter().map(|x| (x >> 8) as u8).collect()
}

/// Pillow's `RGBA -> RGBa`: `c * a / 255` rounded (`MULDIV255`).
fn premultiply(p: &mut Pixels) {
    let ch = p.channels;
    for px in p.data.chunks_exact_mut(ch) {
        let a = px[ch - 1] as u32;
        for c in &mut px[..ch - 1] {
            let t = *c as u32 * a + 128;
            *c = (((t >> 8) + t) >> 8) as u8;
        }
    }
}

/// Pillow's `RGBa -> RGBA`: `255 * c / a` truncated, unchanged where `a` is 0 or 255.
fn unpremultiply(p: &mut Pixels) {
    let ch = p.channels;
    for px in p.data.chunks_exact_mut(ch) {
        let a = px[ch - 1] as u32;
        if a != 0 && a != 255 {
            for c in &mut px[..ch - 1] {
                *c = (255 * *c as u32 / a).min(255) as u8;
            }
        }
    }
}

/// The image transform for one input size.
///
/// ```
/// use perception_encoder::preprocess::{ImageTransform, Pixels, DecodedImage, Resample};
/// let img = DecodedImage { pixels: Pixels { width: 4, height: 2, channels: 3, data: vec![255; 24] }, resample: Resample::Bilinear, cmyk: false, gray16: None };
/// let t = ImageTransform::new(2).apply(&img).unwrap();
/// assert_eq!(t.dims(), &[3, 2, 2]);
/// assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 12]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ImageTransform {
    /// Output side in pixels.
    pub size: usize,
    /// Squash or centre crop.
    pub mode: ResizeMode,
    /// Images with more pixels than this are refused before decoding.
    pub max_pixels: u64,
    /// 16-bit grayscale as the reference (default) or by high byte.
    pub gray16: Gray16,
}

impl ImageTransform {
    /// Squash to `size x size` with the default pixel limit.
    pub fn new(size: usize) -> Self {
        ImageTransform { size, mode: ResizeMode::Squash, max_pixels: DEFAULT_MAX_PIXELS, gray16: Gray16::Pillow }
    }

    /// The transform for a model's native resolution (`image_size`).
    pub fn for_config(cfg: &VisionConfig) -> Self {
        Self::new(cfg.image_size)
    }

    /// Use this resize mode.
    pub fn with_mode(mut self, mode: ResizeMode) -> Self {
        self.mode = mode;
        self
    }

    /// The 8-bit RGB result of resizing (and cropping), before normalization, `size x size x 3`.
    pub fn resize_rgb8(&self, img: &DecodedImage) -> Result<Pixels> {
        let s = self.size;
        if s == 0 {
            return Err(Error::InvalidInput("the transform size must be positive".into()));
        }
        if let (Some(samples), Gray16::Pillow) = (&img.gray16, self.gray16) {
            return self.resize_gray16(img, samples);
        }
        let has_alpha = !img.cmyk && (img.pixels.channels == 2 || img.pixels.channels == 4);
        let nearest = img.resample == Resample::Nearest;
        // Only premultiplication needs a copy of the full-size image.
        let premultiplied = (has_alpha && !nearest).then(|| {
            let mut px = img.pixels.clone();
            premultiply(&mut px);
            px
        });
        let src = premultiplied.as_ref().unwrap_or(&img.pixels);
        let (tw, th) = self.target(src.width, src.height)?;
        let mut px = if nearest { resize::resize_nearest(src, tw, th) } else { resize::resize_bilinear(src, tw, th) };
        if has_alpha && !nearest {
            unpremultiply(&mut px);
        }
        if self.mode == ResizeMode::CenterCrop {
            // torchvision CenterCrop: int(round((side - size) / 2)), Python's round (half to even).
            let top = ((th - s) as f64 / 2.0).round_ties_even() as usize;
            let left = ((tw - s) as f64 / 2.0).round_ties_even() as usize;
            px = resize::crop(&px, left, top, s, s);
        }
        Ok(to_rgb(px, img.cmyk))
    }

    /// The size the image is resized to before any crop.
    fn target(&self, w: usize, h: usize) -> Result<(usize, usize)> {
        let s = self.size;
        let (tw, th) = match self.mode {
            ResizeMode::Squash => (s, s),
            // torchvision: the short side becomes `size`, the long one int(size * long / short).
            ResizeMode::CenterCrop if w <= h => (s, (s as f64 * h as f64 / w as f64) as usize),
            ResizeMode::CenterCrop => ((s as f64 * w as f64 / h as f64) as usize, s),
        };
        // A thin image under centre crop resizes its long side far past `size`: refuse what
        // would not fit the pixel limit instead of allocating it.
        if (tw as u64).saturating_mul(th as u64) > self.max_pixels {
            return Err(Error::InvalidInput(format!(
                "resizing {w}x{h} so its short side is {s} gives {tw}x{th}, above the limit of {} pixels",
                self.max_pixels
            )));
        }
        Ok((tw, th))
    }

    /// Pillow on `I;16`: resize the 16-bit samples (its 16-bit bilinear), crop, then clip each
    /// to 255 as `convert("RGB")` does.
    fn resize_gray16(&self, img: &DecodedImage, samples: &[u16]) -> Result<Pixels> {
        let s = self.size;
        let (w, h) = (img.pixels.width, img.pixels.height);
        let (tw, th) = self.target(w, h)?;
        let resized = resize::resize_bilinear_16(samples, w, h, tw, th);
        let mut px =
            Pixels { width: tw, height: th, channels: 1, data: resized.iter().map(|&v| v.min(255) as u8).collect() };
        if self.mode == ResizeMode::CenterCrop {
            let top = ((th - s) as f64 / 2.0).round_ties_even() as usize;
            let left = ((tw - s) as f64 / 2.0).round_ties_even() as usize;
            px = resize::crop(&px, left, top, s, s);
        }
        Ok(to_rgb(px, false))
    }

    /// The model input `(3, size, size)`, float32, `(k / 255 - 0.5) / 0.5`.
    pub fn apply(&self, img: &DecodedImage) -> Result<Tensor> {
        let rgb = self.resize_rgb8(img)?;
        let s = self.size;
        let mut chw = vec![0f32; 3 * s * s];
        for (i, px) in rgb.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * s * s + i] = (px[c] as f32 / 255.0 - 0.5) / 0.5;
            }
        }
        Ok(Tensor::from_vec(chw, (3, s, s), &Device::Cpu)?)
    }

    /// Decode bytes and apply the transform.
    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Tensor> {
        self.apply(&decode(bytes, self.max_pixels)?)
    }

    /// [`Self::load_bytes`], also returning the image's width and height before the transform.
    pub fn load_bytes_sized(&self, bytes: &[u8]) -> Result<(Tensor, (usize, usize))> {
        let img = decode(bytes, self.max_pixels)?;
        Ok((self.apply(&img)?, (img.pixels.width, img.pixels.height)))
    }

    /// Read a file, decode it and apply the transform; errors name the file.
    pub fn load_path(&self, path: impl AsRef<Path>) -> Result<Tensor> {
        Ok(self.load_path_sized(path)?.0)
    }

    /// [`Self::load_path`], also returning the image's width and height before the transform.
    pub fn load_path_sized(&self, path: impl AsRef<Path>) -> Result<(Tensor, (usize, usize))> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            // Reading a FIFO or a device could block forever or never end.
            let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
            return Err(Error::io(path, e));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        self.load_bytes_sized(&bytes).map_err(|e| match e {
            Error::ImageDecode(m) => Error::ImageDecode(format!("{}: {m}", path.display())),
            other => other,
        })
    }
}

/// Pillow's `convert("RGB")`: gray is replicated, alpha is dropped, CMYK by Pillow's formula.
fn to_rgb(p: Pixels, cmyk: bool) -> Pixels {
    let data = match p.channels {
        4 if cmyk => jpeg::cmyk_to_rgb(&p),
        3 => p.data,
        1 => p.data.iter().flat_map(|&v| [v, v, v]).collect(),
        2 => p.data.chunks_exact(2).flat_map(|c| [c[0], c[0], c[0]]).collect(),
        _ => p.data.chunks_exact(4).flat_map(|c| [c[0], c[1], c[2]]).collect(),
    };
    Pixels { width: p.width, height: p.height, channels: 3, data }
}
