//! Video input: frame sampling by the reference's rules, decoding with FFmpeg (the `ffmpeg` and
//! `ffprobe` programs, run as subprocesses), and the per-frame image transform.
//!
//! Frames are decoded to RGB as decord does (no automatic rotation), then each frame goes
//! through the same [`ImageTransform`] as a still image as soon as FFmpeg hands it over, so
//! one full-size frame is held at a time.
//!
//! FFmpeg only reads the given file: its protocols are limited to `file` and its demuxers to
//! self-contained video containers ([`CONTAINERS`]), so a playlist (HLS, DASH), a concat list or
//! an image-sequence pattern disguised as a video cannot make it open other paths or URLs.

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

/// The demuxers FFmpeg may use: containers that hold their media themselves. Playlists,
/// manifests, concat lists and image patterns (which name other files) are not among them.
pub const CONTAINERS: &str =
    "mov,matroska,avi,flv,mpegts,mpeg,ogg,asf,gif,ivf,nut,m4v,h264,hevc,mpegvideo,yuv4mpegpipe,mjpeg";

/// Selecting frames by an `eq(n,i)` sum is fast but FFmpeg's expression parser limits its
/// length; above this many distinct frames every frame is streamed and the wanted ones kept.
const MAX_SELECT_TERMS: usize = 64;

fn tool(name: &str) -> Command {
    let var = format!("PE_{}", name.to_ascii_uppercase());
    Command::new(std::env::var_os(var).unwrap_or_else(|| name.into()))
}

/// The error for a file FFmpeg recognized as a format outside [`CONTAINERS`].
fn refused_container(stderr: &str) -> Option<Error> {
    let line = stderr.lines().find(|l| l.contains("not on whitelist"))?;
    // FFmpeg names the demuxer in brackets: `[hls @ 0x...] Format not on whitelist`.
    let format = line.trim_start().strip_prefix('[').and_then(|l| l.split_whitespace().next()).unwrap_or("unknown");
    Some(Error::Video(format!(
        "not a self-contained video file (FFmpeg recognized the format `{format}`; playlists, concat lists and \
         image sequences name other files and are refused)"
    )))
}

/// Input options that keep FFmpeg to the file itself, then the file as a `file:` URL (so a
/// name starting with `-` or containing `proto:` is still just a path).
fn restricted_input(cmd: &mut Command, path: &Path) {
    let mut url = std::ffi::OsString::from("file:");
    url.push(path.as_os_str());
    cmd.args(["-protocol_whitelist", "file", "-format_whitelist", CONTAINERS, "-i"]).arg(url);
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
        if let Some(refused) = refused_container(&msg) {
            return Err(refused);
        }
        let msg = msg.lines().last().unwrap_or("").trim();
        return Err(Error::Video(format!("`{what}` failed: {msg}")));
    }
    Ok(out.stdout)
}

/// Whether FFmpeg's `ffmpeg` and `ffprobe` can be run (honouring `PE_FFMPEG` / `PE_FFPROBE`).
pub fn available() -> bool {
    ["ffmpeg", "ffprobe"].iter().all(|name| {
        let mut cmd = tool(name);
        cmd.arg("-version").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    })
}

/// Count the frames of a video by decoding it (`ffprobe -count_frames`), as decord's length.
pub fn probe(path: &Path) -> Result<VideoInfo> {
    if !path.is_file() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
    }
    let mut cmd = tool("ffprobe");
    cmd.args(["-v", "error", "-select_streams", "v:0", "-count_frames"]).args([
        "-show_entries",
        "stream=width,height,nb_read_frames",
        "-of",
        "csv=p=0",
    ]);
    restricted_input(&mut cmd, path);
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
    let mut frames = Vec::new();
    let order = for_each_frame(path, info, indices, |px| {
        frames.push(px);
        Ok(())
    })?;
    Ok(order.iter().map(|&k| frames[k].clone()).collect())
}

/// Decode the distinct frames among `indices` in ascending order, handing each to `f` as it
/// arrives; returns, for each entry of `indices`, the position of its frame in that order.
fn for_each_frame(
    path: &Path,
    info: &VideoInfo,
    indices: &[usize],
    mut f: impl FnMut(Pixels) -> Result<()>,
) -> Result<Vec<usize>> {
    let mut wanted: Vec<usize> = indices.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    if let Some(&bad) = wanted.iter().find(|&&i| i >= info.frames) {
        return Err(Error::InvalidInput(format!("frame {bad} is past the last frame ({})", info.frames)));
    }
    let select = wanted.len() <= MAX_SELECT_TERMS;
    let mut cmd = tool("ffmpeg");
    cmd.args(["-v", "error", "-nostdin", "-noautorotate"]);
    restricted_input(&mut cmd, path);
    cmd.args(["-map", "0:v:0"]);
    if select {
        let expr = wanted.iter().map(|i| format!("eq(n\\,{i})")).collect::<Vec<_>>().join("+");
        cmd.args(["-vf", &format!("select='{expr}'")]);
    }
    cmd.args(["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
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
    let Some(mut stdout) = child.stdout.take() else {
        return Err(Error::Video("ffmpeg's output pipe is missing".into()));
    };
    let (mut got, mut n, mut failed) = (0, 0, None);
    let mut buf = vec![0u8; frame_bytes];
    while got < wanted.len() {
        if stdout.read_exact(&mut buf).is_err() {
            break;
        }
        if select || wanted[got] == n {
            let data = std::mem::replace(&mut buf, vec![0u8; frame_bytes]);
            let px = Pixels { width: info.width, height: info.height, channels: 3, data };
            if let Err(e) = f(px) {
                failed = Some(e);
                break;
            }
            got += 1;
        }
        n += 1;
    }
    drop(buf);
    drop(stdout);
    if got < wanted.len() || failed.is_some() {
        // Stop a decoder that still has frames to give.
        let _ = child.kill();
    }
    let out = child.wait_with_output().map_err(|e| Error::Video(format!("ffmpeg: {e}")))?;
    if let Some(e) = failed {
        return Err(e);
    }
    if got != wanted.len() {
        let msg = String::from_utf8_lossy(&out.stderr);
        if let Some(refused) = refused_container(&msg) {
            return Err(refused);
        }
        return Err(Error::Video(format!(
            "{}: decoded {} of {} frames ({})",
            path.display(),
            got,
            wanted.len(),
            msg.lines().last().unwrap_or("ffmpeg gave no reason").trim()
        )));
    }
    Ok(indices.iter().filter_map(|i| wanted.binary_search(i).ok()).collect())
}

/// A clip ready for `encode_video`: `(n, 3, size, size)` from `n` frames sampled by `rule`.
/// Each frame is transformed as it is decoded; one full-size frame is held at a time.
pub fn load_clip(path: impl AsRef<Path>, n: usize, rule: FrameSampling, transform: &ImageTransform) -> Result<Tensor> {
    let path = path.as_ref();
    if n == 0 {
        return Err(Error::InvalidInput("at least one frame is needed".into()));
    }
    let info = probe(path)?;
    load_clip_probed(path, &info, n, rule, transform)
}

/// [`load_clip`] for a video already probed (`info` from [`probe`] of the same file).
pub fn load_clip_probed(
    path: impl AsRef<Path>,
    info: &VideoInfo,
    n: usize,
    rule: FrameSampling,
    transform: &ImageTransform,
) -> Result<Tensor> {
    let path = path.as_ref();
    if n == 0 {
        return Err(Error::InvalidInput("at least one frame is needed".into()));
    }
    if (info.width as u64) * (info.height as u64) > transform.max_pixels {
        return Err(Error::ImageTooLarge {
            width: info.width as u32,
            height: info.height as u32,
            limit: transform.max_pixels,
        });
    }
    let mut tensors = Vec::new();
    let order = for_each_frame(path, info, &frame_indices(info.frames, n, rule), |pixels| {
        tensors.push(transform.apply(&DecodedImage {
            pixels,
            resample: Resample::Bilinear,
            cmyk: false,
            gray16: None,
        })?);
        Ok(())
    })?;
    let frames: Vec<&Tensor> = order.iter().map(|&k| &tensors[k]).collect();
    Ok(Tensor::stack(&frames, 0)?)
}
