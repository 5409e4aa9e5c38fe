//! A missing FFmpeg is a clear error, not a panic. (Its own test binary: it changes the
//! process environment.)

use perception_encoder::preprocess::ImageTransform;
use perception_encoder::video::{load_clip, FrameSampling};

#[test]
fn missing_ffmpeg_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let video = tmp.path().join("clip.mp4");
    std::fs::write(&video, b"not really a video").unwrap();
    std::env::set_var("PE_FFPROBE", tmp.path().join("no-such-ffprobe"));
    let err = load_clip(&video, 8, FrameSampling::Benchmark, &ImageTransform::new(32)).unwrap_err().to_string();
    assert!(err.contains("ffprobe") && err.contains("install FFmpeg"), "{err}");
}
