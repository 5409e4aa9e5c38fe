//! Video: frame sampling rules against `video.json`, FFmpeg decoding of `dog.mp4`, and
//! `encode_video` on decoded frames.

mod common;

use common::{fixture, fixtures};
use perception_encoder::preprocess::ImageTransform;
use perception_encoder::video::{frame_indices, load_clip, probe, FrameSampling};
use perception_encoder::{Clip, ClipConfig, LoadOptions};

fn indices(v: &serde_json::Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

#[test]
fn sampling_rules_match_the_reference() {
    let Some(dir) = fixtures() else { return };
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(&dir, "video.json")).unwrap()).unwrap();
    let total = meta["frames_decoded"].as_u64().unwrap() as usize;
    assert_eq!(frame_indices(total, 8, FrameSampling::Benchmark), indices(&meta["benchmark_indices_8"]));
    assert_eq!(frame_indices(total, 8, FrameSampling::Demo), indices(&meta["demo_indices_8"]));
    assert_eq!(frame_indices(total, 1, FrameSampling::Benchmark), indices(&meta["benchmark_indices_1"]));
    assert_eq!(frame_indices(3, 5, FrameSampling::Benchmark), vec![0, 0, 1, 1, 2]);
}

#[test]
fn decode_and_encode_dog_mp4() {
    let Some(dir) = fixtures() else { return };
    let path = fixture(&dir, "dog.mp4");
    let info = probe(&path).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(&dir, "video.json")).unwrap()).unwrap();
    assert_eq!(info.frames as u64, meta["frames_decoded"].as_u64().unwrap());
    assert_eq!(
        (info.width as u64, info.height as u64),
        (meta["width"].as_u64().unwrap(), meta["height"].as_u64().unwrap())
    );

    let cfg = ClipConfig::from_json_file(fixture(&dir, "tiny-cls.json")).unwrap();
    let model = Clip::load(&cfg, fixture(&dir, "tiny-cls.pt"), &LoadOptions::default()).unwrap();
    let transform = ImageTransform::for_config(&cfg.vision);
    let clip = load_clip(&path, 8, FrameSampling::Benchmark, &transform).unwrap();
    assert_eq!(clip.dims(), &[8, 3, 32, 32]);
    // Frames differ (the dog moves) and are proper pixel values.
    let v: Vec<f32> = clip.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
    let first = clip.get(0).unwrap();
    let last = clip.get(7).unwrap();
    assert!(first.sub(&last).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.1);

    let video = model.encode_video(&clip.unsqueeze(0).unwrap(), true).unwrap();
    let frames = model.encode_image(&clip, true).unwrap();
    let mean = frames.mean(0).unwrap().unsqueeze(0).unwrap();
    common::assert_close("encode_video = mean of normalized frame embeddings", &video, &mean);
    // Repeated indices (more frames than the video has) decode too.
    let short = load_clip(&path, 3, FrameSampling::Demo, &transform).unwrap();
    assert_eq!(short.dims(), &[3, 3, 32, 32]);
}

#[test]
fn video_errors_are_clear() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let bogus = tmp.path().join("not-a-video.mp4");
    std::fs::write(&bogus, b"hello").unwrap();
    let t = ImageTransform::new(32);
    let err = load_clip(&bogus, 8, FrameSampling::Benchmark, &t).unwrap_err().to_string();
    assert!(err.contains("video"), "{err}");
    let err = load_clip(tmp.path().join("absent.mp4"), 8, FrameSampling::Benchmark, &t).unwrap_err().to_string();
    assert!(err.contains("absent.mp4"), "{err}");
    let err = load_clip(fixture(&dir, "dog.mp4"), 0, FrameSampling::Benchmark, &t).unwrap_err().to_string();
    assert!(err.contains("frame"), "{err}");
}

/// More frames than FFmpeg's select expression can name: every frame is streamed and the wanted
/// ones kept, giving the same frames as the selecting path where both apply.
#[test]
fn more_than_a_hundred_frames() {
    let Some(dir) = fixtures() else { return };
    let path = fixture(&dir, "dog.mp4");
    let t = ImageTransform::new(16);
    let many = load_clip(&path, 120, FrameSampling::Benchmark, &t).unwrap();
    let few = load_clip(&path, 2, FrameSampling::Benchmark, &t).unwrap();
    assert_eq!(many.dims(), &[120, 3, 16, 16]);
    // Both rules start at frame 0 and end at the last frame.
    for (m, f) in [(0, 0), (119, 1)] {
        let a: Vec<f32> = many.get(m).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = few.get(f).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b, "frame {m} of 120 differs from frame {f} of 2");
    }
    let distinct = frame_indices(probe(&path).unwrap().frames, 120, FrameSampling::Benchmark);
    assert!(distinct.windows(2).filter(|w| w[0] != w[1]).count() > 64, "the streaming path was not exercised");
}
