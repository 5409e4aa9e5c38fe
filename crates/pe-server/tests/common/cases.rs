//! Requests for the load test and the load benchmark, each with the answer it must get. Valid
//! answers are the library's own results for the same input computed alone, so a batched
//! answer that differs from the solo one is caught.

use std::path::Path;

use base64::Engine as _;
use pe_testutil::load::Case;
use perception_encoder::candle_core::{Device, Tensor};
use perception_encoder::preprocess::ImageTransform;
use perception_encoder::tokenizer::ClipTokenizer;
use perception_encoder::Clip;
use serde_json::json;

/// The fixture images a client would send, as files.
pub use pe_testutil::FIXTURE_IMAGES as IMAGES;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

fn normalized(v: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    v.into_iter()
        .map(|r| {
            let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            r.into_iter().map(|x| x / n).collect()
        })
        .collect()
}

/// Solo image embeddings (raw) of `files` at `layer`.
fn image_rows(model: &Clip, files: &[Vec<u8>], layer: isize) -> Vec<Vec<f32>> {
    let t = ImageTransform::for_config(&model.config().vision);
    files
        .iter()
        .flat_map(|f| {
            let x = t.load_bytes(f).unwrap().unsqueeze(0).unwrap();
            rows(&model.encode_image_at(&x, layer, false).unwrap())
        })
        .collect()
}

fn text_rows(model: &Clip, texts: &[String]) -> Vec<Vec<f32>> {
    let ctx = model.text().unwrap().config().context_length;
    let tok = ClipTokenizer::new(ctx);
    texts
        .iter()
        .flat_map(|t| {
            let ids = tok.tokenize_batch(std::slice::from_ref(t), &Device::Cpu).unwrap();
            rows(&model.encode_text(&ids, false).unwrap())
        })
        .collect()
}

/// One single-image `/embed/image` request per fixture image.
pub fn image_cases(model: &Clip, dir: &Path, tol: f32) -> Vec<Case> {
    IMAGES
        .iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join("images").join(name)).unwrap();
            let want = normalized(image_rows(model, std::slice::from_ref(&bytes), -1));
            Case::valid(&format!("image {name}"), "/embed/image", json!({"images": [b64(&bytes)]}), want, tol)
        })
        .collect()
}

/// Valid requests of every kind (images alone and in pairs, an intermediate layer, texts,
/// OpenAI-style mixed input) and invalid ones (bad base64, not an image, a truncated PNG, an
/// empty list, an unknown field, too many items, a wrong model name, a wrong JSON type).
/// `max_items` is the server's per-request limit.
pub fn mixed_cases(model: &Clip, dir: &Path, tol: f32, max_items: usize) -> Vec<Case> {
    let read = |f: &str| std::fs::read(dir.join("images").join(f)).unwrap();
    let mut cases = image_cases(model, dir, tol);
    let (cat, dog) = (read("cat.png"), read("dog.png"));
    let pair = image_rows(model, &[cat.clone(), dog.clone()], -1);
    cases.push(Case::valid(
        "two images, raw",
        "/embed/image",
        json!({"images": [b64(&cat), format!("data:image/png;base64,{}", b64(&dog))], "normalize": false}),
        pair,
        tol,
    ));
    let layers = model.config().vision.layers as isize;
    cases.push(Case::valid(
        "image at layer -2",
        "/embed/image",
        json!({"images": [b64(&cat)], "layer": -2, "normalize": false}),
        image_rows(model, std::slice::from_ref(&cat), -2),
        tol,
    ));
    if model.text().is_some() {
        let prompts = perception_encoder::bench::realistic_prompts(12);
        for (i, n) in [1usize, 3, 2].into_iter().enumerate() {
            let texts: Vec<String> = prompts[i * 4..i * 4 + n].to_vec();
            let want = normalized(text_rows(model, &texts));
            cases.push(Case::valid(&format!("{n} texts"), "/embed/text", json!({"texts": texts}), want, tol));
        }
        let text = "a diagram of a transformer".to_string();
        let mut want = text_rows(model, std::slice::from_ref(&text));
        want.extend(image_rows(model, std::slice::from_ref(&dog), -1));
        cases.push(Case::valid(
            "openai text + image",
            "/v1/embeddings",
            json!({"input": [text, format!("data:image/png;base64,{}", b64(&dog))], "model": model.config().name}),
            normalized(want),
            tol,
        ));
    }
    let truncated = &dog[..dog.len() / 2];
    cases.extend([
        Case::invalid("bad base64", "/embed/image", json!({"images": ["!!not base64!!"]}), 400, "base64"),
        Case::invalid("not an image", "/embed/image", json!({"images": [b64(b"plain text")]}), 400, "image 0"),
        Case::invalid("truncated png", "/embed/image", json!({"images": [b64(truncated)]}), 400, "image 0"),
        Case::invalid("empty list", "/embed/text", json!({"texts": []}), 400, "no texts"),
        Case::invalid("unknown field", "/embed/image", json!({"images": [b64(&cat)], "size": 9}), 400, "unknown field"),
        Case::invalid("too many items", "/embed/text", json!({"texts": vec!["a"; max_items + 1]}), 413, "limit"),
        Case::invalid("wrong model", "/v1/embeddings", json!({"input": "a", "model": "PE-Core-X"}), 400, "serves"),
        Case::invalid("wrong JSON type", "/embed/text", json!("texts"), 400, "invalid request"),
        Case::invalid(
            "layer out of range",
            "/embed/image",
            json!({"images": [b64(&cat)], "layer": layers + 5}),
            400,
            "layer",
        ),
    ]);
    cases
}
