//! Models built with one tower (`LoadOptions::towers`): the reference's numbers for the tower
//! that is there (the fixtures' expected outputs, and the very bits of the whole model), a
//! typed error for the one left out, and random weights that do not depend on the choice.

mod common;

use std::path::Path;

use common::{assert_close, fixture, fixtures, load_tensors};
use perception_encoder::candle_core::Tensor;
use perception_encoder::{Clip, ClipConfig, Error, LoadOptions, Towers};

fn opts(towers: Towers) -> LoadOptions {
    LoadOptions { towers, ..LoadOptions::default() }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

fn check(dir: &Path, name: &str, checkpoint: &str) {
    let cfg = ClipConfig::from_json_file(fixture(dir, &format!("{name}.json"))).unwrap();
    let path = fixture(dir, checkpoint);
    let expected = load_tensors(&fixture(dir, &format!("{name}.expected.safetensors")));
    let (pixels, ids) = (&expected["pixels_native"], &expected["text_ids"]);
    let both = Clip::load(&cfg, &path, &opts(Towers::Both)).unwrap();
    assert_eq!(both.towers(), Towers::Both);

    let image = Clip::load(&cfg, &path, &opts(Towers::Image)).unwrap();
    assert_eq!(image.towers(), Towers::Image);
    assert!(image.text().is_none() && image.visual().is_some());
    let y = image.encode_image(pixels, false).unwrap();
    assert_close(&format!("{name} image tower alone"), &y, &expected["image_embed_native"]);
    assert_eq!(bits(&y), bits(&both.encode_image(pixels, false).unwrap()), "{name}: image tower alone vs both");
    match image.encode_text(ids, true) {
        Err(Error::NotLoaded(part)) => assert_eq!(part, "text tower"),
        other => panic!("{name}: encode_text without the text tower gave {other:?}"),
    }
    // logit_scale is the model's, whichever tower is built.
    let scale = Tensor::new(image.logit_scale().unwrap(), &perception_encoder::candle_core::Device::Cpu).unwrap();
    assert_close(&format!("{name} logit_scale"), &scale, &expected["logit_scale_exp"]);
    assert!(matches!(image.forward(Some(pixels), Some(ids)), Err(Error::NotLoaded(_))));

    let text = Clip::load(&cfg, &path, &opts(Towers::Text)).unwrap();
    assert_eq!(text.towers(), Towers::Text);
    assert!(text.visual().is_none() && text.text().is_some());
    let y = text.encode_text(ids, false).unwrap();
    assert_close(&format!("{name} text tower alone"), &y, &expected["text_embed"]);
    assert_eq!(bits(&y), bits(&both.encode_text(ids, false).unwrap()), "{name}: text tower alone vs both");
    for (what, result) in [
        ("encode_image", text.encode_image(pixels, true)),
        ("forward_features", text.forward_features(pixels, -1, true, false)),
        ("encode_video", text.encode_video(&expected["video"], true)),
    ] {
        match result {
            Err(e @ Error::NotLoaded(_)) => {
                assert!(e.to_string().contains("vision tower was not loaded"), "{what}: {e}")
            }
            other => panic!("{name}: {what} without the vision tower gave {other:?}"),
        }
    }
    let mut truncated = Clip::load(&cfg, &path, &opts(Towers::Text)).unwrap();
    assert!(matches!(truncated.truncate(0), Err(Error::NotLoaded("vision tower"))));
}

#[test]
fn one_tower_gives_the_same_numbers_and_refuses_the_other() {
    let Some(dir) = fixtures() else { return };
    check(&dir, "tiny-cls", "tiny-cls.safetensors");
    check(&dir, "tiny-nocls", "tiny-nocls.pt");
}

#[test]
fn random_weights_of_one_tower_are_those_of_the_whole_model() {
    let Some(dir) = fixtures() else { return };
    let cfg = ClipConfig::from_json_file(fixture(&dir, "tiny-cls.json")).unwrap();
    let expected = load_tensors(&fixture(&dir, "tiny-cls.expected.safetensors"));
    let (pixels, ids) = (&expected["pixels_native"], &expected["text_ids"]);
    let both = Clip::random(&cfg, 7, &opts(Towers::Both)).unwrap();
    let image = Clip::random(&cfg, 7, &opts(Towers::Image)).unwrap();
    let text = Clip::random(&cfg, 7, &opts(Towers::Text)).unwrap();
    let whole = bits(&both.encode_image(pixels, false).unwrap());
    assert_eq!(bits(&image.encode_image(pixels, false).unwrap()), whole);
    assert_eq!(bits(&text.encode_text(ids, false).unwrap()), bits(&both.encode_text(ids, false).unwrap()));
    // Another seed is another model: the comparison above can fail.
    let other = Clip::random(&cfg, 8, &opts(Towers::Image)).unwrap();
    assert_ne!(bits(&other.encode_image(pixels, false).unwrap()), whole);
    assert!(text.visual().is_none() && image.text().is_none());
}

#[test]
fn a_vision_only_model_has_no_text_tower_to_load_alone() {
    let cfg = ClipConfig::from_json_str(
        r#"{"vision": {"patch_size": 8, "width": 32, "layers": 1, "heads": 2, "mlp_ratio": 4.0,
            "output_dim": 16, "image_size": 32}}"#,
    )
    .unwrap();
    match Clip::random(&cfg, 0, &opts(Towers::Text)) {
        Err(Error::MissingPart { part, .. }) => assert_eq!(part, "text tower"),
        other => panic!("a text-only vision-only model gave {other:?}"),
    }
    let image = Clip::random(&cfg, 0, &opts(Towers::Image)).unwrap();
    assert_eq!(image.towers(), Towers::Both, "a vision-only model built whole");
    assert!(matches!(
        image.encode_text(
            &Tensor::zeros((1, 4), perception_encoder::candle_core::DType::I64, image.device()).unwrap(),
            true
        ),
        Err(Error::MissingPart { .. })
    ));
}
