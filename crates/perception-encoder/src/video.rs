//! Video input: frame sampling by the reference's rules, decoding with FFmpeg (the `ffmpeg` and
//! `ffprobe` programs, run as subprocesses), and the per-frame image transform.
//!
//! Frames are decoded to RGB as decord does (no automatic rotation), then each frame goes
//! through the same [`ImageTransform`] as a still image.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::preprocess::{DecodedImage, ImageTransform, Pixels, Resample};

/// Which frames of a video are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrameSampling {
    /// The benchmark datasets' rule: `int(i * (total - 1) / (n - 1))`, first and last frame
    /// included; `[total // 2]` for one frame.
    #[default]
    Benchmark,
    /// The demo notebook's rule: `int(i * (total / n))`.
    Demo,
}

/// The frame indices of `n` frames out of `total` under `rule`.
///
/// ```
/// use perception_encoder::video::{frame_indices, FrameSampling};
/// assert_eq!(frame_indices(150, 8, FrameSampling::Benchmark), [0, 21, 42, 63, 85, 106, 127, 149]);
/// assert_eq!(frame_indices(150, 8, FrameSampling::Demo), [0, 18, 37, 56, 75, 93, 112, 131]);
/// ```
pub fn frame_indices(total: usize, n: usize, rule: FrameSampling) -> Vec<usize> {
    if total == 0 || n == 0 {
        return Vec::new();
    }
    match rule {
        FrameSampling::Benchmark if n == 1 => vec![total / 2],
        FrameSampling::Benchmark => (0..n).map(|i| ((i * (total - 1)) as f64 / (n - 1) as f64) as usize).collect(),
        FrameSampling::Demo => {
            let step = total as f64 / n as f64;
            (0..n).map(|i| (i as f64 * step) as usize).collect()
        }
    }
}

/// Size and decoded frame count of a video's first video stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoInfo {
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Number of frames a full decode yields.
    pub frames: usize,
}

fn tool(name: &str) -> Command {
    let var = format!("PE_{}", name.to_ascii_uppercase());
    Command::new(std::env::var_os(var).unwrap_or_else(|| name.into()))
}

fn run(mut cmd: Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Video(format!("`{what}` was not found; install FFmpeg (e.g. `apt-get install ffmpeg`)"))
        } else {
            Error::Video(format!("cannot run `{what}`: {e}"))
        }
    })?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let msg = msg.lines().last().unwrap_or("").trim();
        return Err(Error::Video(format!("`{what}` failed: {msg}")));
    }
    Ok(out.stdout)
}

/// Count the frames of a video by decoding it (`ffprobe -count_frames`), as decord's length.
pub fn probe(path: &Path) -> Result<VideoInfo> {
    if !path.is_file() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
    }
    let mut cmd = tool("ffprobe");
    cmd.args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args(["-show_entries", "stream=width,height,nb_read_frames", "-of", "csv=p=0"])
        .arg(path);
    let out = run(cmd, "ffprobe")?;
    let text = String::from_utf8_lossy(&out);
    let fields: Vec<&str> = text.trim().split(',').map(str::trim).collect();
    let parse = |i: usize| fields.get(i).and_then(|f| f.parse::<usize>().ok());
    match (parse(0), parse(1), parse(2)) {
        (Some(width), Some(height), Some(frames)) if width > 0 && height > 0 && frames > 0 => {
            Ok(VideoInfo { width, height, frames })
        }
        _ => {
            Err(Error::Video(format!("{}: no decodable video stream (ffprobe said {:?})", path.display(), text.trim())))
        }
    }
}

/// Decode the frames at `indices` (any order, repeats allowed) as RGB images.
pub fn decode_frames(path: &Path, info: &VideoInfo, indices: &[usize]) -> Result<Vec<Pixels>> {
    let mut wanted: Vec<usize> = indices.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    if let Some(&bad) = wanted.iter().find(|&&i| i >= info.frames) {
        return Err(Error::InvalidInput(format!("frame {bad} is past the last frame ({})", info.frames)));
    }
    let select = wanted.iter().map(|i| format!("eq(n\\,{i})")).collect::<Vec<_>>().join("+");
    let mut cmd = tool("ffmpeg");
    cmd.args(["-v", "error", "-nostdin", "-noautorotate", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-vf", &format!("select='{select}'"), "-fps_mode", "passthrough"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Video("`ffmpeg` was not found; install FFmpeg (e.g. `apt-get install ffmpeg`)".into())
        } else {
            Error::Video(format!("cannot run `ffmpeg`: {e}"))
        }
    })?;
    let frame_bytes = info.width * info.height * 3;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut frames = Vec::with_capacity(wanted.len());
    for _ in 0..wanted.len() {
        let mut buf = vec![0u8; frame_bytes];
        if stdout.read_exact(&mut buf).is_err() {
            break;
        }
        frames.push(Pixels { width: info.width, height: info.height, channels: 3, data: buf });
    }
    let out = child.wait_with_output().map_err(|e| Error::Video(format!("ffmpeg: {e}")))?;
    if frames.len() != wanted.len() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Video(format!(
            "{}: decoded {} of {} frames ({})",
            path.display(),
            frames.len(),
            wanted.len(),
            msg.lines().last().unwrap_or("ffmpeg gave no reason").trim()
        )));
    }
    Ok(indices.iter().map(|i| frames[wanted.binary_search(i).expect("index was decoded")].clone()).collect())
}

/// A clip ready for `encode_video`: `(n, 3, size, size)` from `n` frames sampled by `rule`.
pub fn load_clip(path: impl AsRef<Path>, n: usize, rule: FrameSampling, transform: &ImageTransform) -> Result<Tensor> {
    let path = path.as_ref();
    if n == 0 {
        return Err(Error::InvalidInput("at least one frame is needed".into()));
    }
    let info = probe(path)?;
    if (info.width as u64) * (info.height as u64) > transform.max_pixels {
        return Err(Error::ImageTooLarge {
            width: info.width as u32,
            height: info.height as u32,
            limit: transform.max_pixels,
        });
    }
    let frames = decode_frames(path, &info, &frame_indices(info.frames, n, rule))?;
    let tensors = frames
        .into_iter()
        .map(|pixels| transform.apply(&DecodedImage { pixels, resample: Resample::Bilinear }))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&tensors, 0)?)
}
