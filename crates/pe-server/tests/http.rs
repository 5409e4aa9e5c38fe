//! The service on 127.0.0.1 with the fixtures' tiny model: results equal the reference, batched
//! results equal solo ones, and bad input gets a JSON 4xx.

mod common;

use std::time::Duration;

use base64::Engine as _;
use pe_server::{BatchConfig, ServerConfig};
use pe_testutil::fixtures;
use perception_encoder::{Clip, ClipConfig, LoadOptions, Towers};
use serde_json::{json, Value};

/// Start a server for tiny-cls on a free loopback port; returns its base URL.
fn start(dir: &std::path::Path, cfg: ServerConfig) -> String {
    let model_cfg = ClipConfig::from_json_file(dir.join("tiny-cls.json")).unwrap();
    let model = Clip::load(&model_cfg, dir.join("tiny-cls.pt"), &LoadOptions::default()).unwrap();
    common::serve(model, cfg)
}

fn expected(dir: &std::path::Path, name: &str) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(dir.join("tiny-cls.expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let cols = *t.shape().last().unwrap();
    let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    v.chunks(cols).map(|c| c.to_vec()).collect()
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

fn close(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().flatten().zip(b.iter().flatten()).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn post(url: &str, body: Value) -> (u16, Value) {
    match ureq::post(url).send_json(body) {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{url}: {e}"),
    }
}

fn prompts(dir: &std::path::Path) -> Vec<String> {
    let m: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tiny-cls.expected.json")).unwrap()).unwrap();
    m["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

#[test]
fn routes_give_the_reference_numbers() {
    let Some(dir) = fixtures() else { return };
    let base = start(&dir, ServerConfig::default());
    assert_eq!(ureq::get(&format!("{base}/health")).call().unwrap().status(), 200);
    let ready: Value = ureq::get(&format!("{base}/ready")).call().unwrap().into_json().unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["precision"], "f32");
    let models: Value = ureq::get(&format!("{base}/v1/models")).call().unwrap().into_json().unwrap();
    assert_eq!(models["data"][0]["id"], "tiny-cls");

    let (code, v) = post(&format!("{base}/embed/text"), json!({"texts": prompts(&dir)}));
    assert_eq!(code, 200, "{v}");
    assert!(close(&rows(&v["embeddings"]), &expected(&dir, "text_embed_norm")) <= 1e-5);

    let b64 =
        |f: &str| base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("images").join(f)).unwrap());
    let images = json!([b64("cat.png"), format!("data:image/webp;base64,{}", b64("dog.png"))]);
    let (code, v) = post(&format!("{base}/embed/image"), json!({"images": images, "normalize": false}));
    assert_eq!(code, 200, "{v}");
    assert!(close(&rows(&v["embeddings"]), &expected(&dir, "image_embed_native")) <= 1e-5 * 2.3);

    // OpenAI-compatible: text and a data-URL image mixed, float and base64 encodings.
    let input = json!([prompts(&dir)[0], format!("data:image/png;base64,{}", b64("cat.png"))]);
    let (code, v) = post(&format!("{base}/v1/embeddings"), json!({"input": input, "model": "tiny-cls"}));
    assert_eq!(code, 200, "{v}");
    let got: Vec<Vec<f32>> =
        v["data"].as_array().unwrap().iter().map(|d| rows(&json!([d["embedding"]]))[0].clone()).collect();
    assert!(close(&got[..1], &expected(&dir, "text_embed_norm")[..1]) <= 1e-5);
    assert!(close(&got[1..], &expected(&dir, "image_embed_norm_native")[..1]) <= 1e-5);
    let (code, v) =
        post(&format!("{base}/v1/embeddings"), json!({"input": prompts(&dir)[0], "encoding_format": "base64"}));
    assert_eq!(code, 200, "{v}");
    let bytes = base64::engine::general_purpose::STANDARD.decode(v["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let floats: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert!(close(&[floats], &expected(&dir, "text_embed_norm")[..1]) <= 1e-5);

    // Metrics count what was served above.
    let text = common::metrics(&base);
    let value = |name: &str| common::metric(&text, name).unwrap_or_else(|| panic!("no `{name}` in\n{text}"));
    assert_eq!(value("pe_requests_total{route=\"/embed/text\",status=\"200\"}"), 1.0);
    assert_eq!(value("pe_requests_total{route=\"/v1/embeddings\",status=\"200\"}"), 2.0);
    assert_eq!(value("pe_items_total{kind=\"image\"}"), 3.0);
    assert_eq!(value("pe_items_total{kind=\"text\"}"), 7.0);
    assert!(value("pe_batch_size_count{}") >= 4.0);
    assert!(text.contains("pe_request_duration_seconds_bucket{route=\"/embed/image\",le=\"+Inf\"} 1"));
    assert_eq!(value("pe_queue_depth"), 0.0);
    assert_eq!(value("pe_model_info{model=\"tiny-cls\",precision=\"f32\"}"), 1.0);
    // Answered requests leave the in-flight gauge; this /metrics request is still in it.
    assert_eq!(value("pe_requests_in_flight{route=\"/embed/text\"}"), 0.0);
    assert_eq!(value("pe_requests_in_flight{route=\"/metrics\"}"), 1.0);
}

#[test]
fn batched_requests_equal_solo_ones() {
    let Some(dir) = fixtures() else { return };
    let cfg = ServerConfig {
        batch: BatchConfig {
            max_batch: 16,
            max_text_batch: 64,
            max_wait: Duration::from_millis(50),
            queue_capacity: 64,
        },
        ..ServerConfig::default()
    };
    let base = start(&dir, cfg);
    let texts = prompts(&dir);
    let solo: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| rows(&post(&format!("{base}/embed/text"), json!({"texts": [t]})).1["embeddings"])[0].clone())
        .collect();
    let handles: Vec<_> = texts
        .iter()
        .cloned()
        .map(|t| {
            let url = format!("{base}/embed/text");
            std::thread::spawn(move || rows(&post(&url, json!({"texts": [t]})).1["embeddings"])[0].clone())
        })
        .collect();
    let together: Vec<Vec<f32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(close(&solo, &together) <= 1e-5, "batched and solo results differ");
}

#[test]
fn bad_input_gets_json_4xx_and_auth_is_enforced() {
    let Some(dir) = fixtures() else { return };
    let base = start(
        &dir,
        ServerConfig {
            api_key: Some("sekrit".into()),
            max_items: 4,
            max_body_bytes: 256 << 10,
            max_pixels: 1 << 20,
            ..ServerConfig::default()
        },
    );
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let with_key = |path: &str, body: Value| -> (u16, Value) {
        match ureq::post(&format!("{base}{path}")).set("Authorization", "Bearer sekrit").send_json(body) {
            Ok(r) => (r.status(), r.into_json().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap()),
            Err(e) => panic!("{e}"),
        }
    };
    // /health needs no key; everything else does.
    assert_eq!(ureq::get(&format!("{base}/health")).call().unwrap().status(), 200);
    let (code, v) = post(&format!("{base}/embed/text"), json!({"texts": ["a"]}));
    assert_eq!(code, 401);
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(with_key("/embed/text", json!({"texts": ["a"]})).0, 200);

    for (path, body, status, needle) in [
        ("/embed/image", json!({"images": ["!!!not base64"]}), 400, "base64"),
        (
            "/embed/image",
            json!({"images": [base64::engine::general_purpose::STANDARD.encode(b"not an image")]}),
            400,
            "image 0",
        ),
        ("/embed/text", json!({"texts": []}), 400, "no texts"),
        ("/embed/text", json!({"texts": ["a"], "colour": "blue"}), 400, "unknown field"),
        ("/embed/text", json!({"texts": ["a", "b", "c", "d", "e"]}), 413, "limit"),
        ("/v1/embeddings", json!({"input": "a", "encoding_format": "hex"}), 400, "encoding_format"),
        ("/v1/embeddings", json!({"input": "a", "model": "PE-Core-G14-448"}), 400, "serves"),
        // A PNG header announcing 2048 x 2048 pixels is refused before decoding (limit 1 Mpx).
        ("/embed/image", json!({"images": [b64(&png_header(2048, 2048))]}), 413, "image 0"),
    ] {
        let (code, v) = with_key(path, body);
        assert_eq!(code, status, "{path}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{path}: {msg}");
    }
    let r = ureq::post(&format!("{base}/embed/text")).set("Authorization", "Bearer sekrit").send_string("{not json");
    assert!(matches!(r, Err(ureq::Error::Status(400, _))));

    // A body over the 256 KiB limit is refused from its Content-Length alone. The client asks
    // `Expect: 100-continue` (as curl does for large bodies), so the 413 arrives before any of
    // the body is sent; a client that writes the body first may see the connection close
    // before it reads the answer.
    let addr = base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    std::io::Write::write_all(
        &mut conn,
        format!(
            "POST /embed/image HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer sekrit\r\n\
             Content-Type: application/json\r\nContent-Length: 400000\r\nExpect: 100-continue\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let got = std::io::Read::read(&mut conn, &mut buf).unwrap();
    let response = String::from_utf8_lossy(&buf[..got]).to_string();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("size limit"), "{response}");
}

/// The start of a PNG that announces `w` x `h` pixels: signature, IHDR for 8-bit RGB, and an
/// empty IDAT (a decompression bomb in miniature).
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for chunk in [ihdr, b"IDAT".to_vec()] {
        out.extend((chunk.len() as u32 - 4).to_be_bytes());
        out.extend(&chunk);
        out.extend(crc32(&chunk).to_be_bytes());
    }
    out
}

#[test]
fn classify_matches_the_reference_logits() {
    let Some(dir) = fixtures() else { return };
    let base = start(&dir, ServerConfig::default());
    let labels: Vec<String> = prompts(&dir)[..2].to_vec();
    let b64 =
        |f: &str| base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("images").join(f)).unwrap());
    let body = json!({"images": [b64("cat.png"), b64("dog.png")], "labels": labels, "templates": ["{}"], "top_k": 2});
    for _ in 0..2 {
        // The second request is served from the class-vector cache; both must agree with the reference.
        let (code, v) = post(&format!("{base}/classify"), body.clone());
        assert_eq!(code, 200, "{v}");
        let logits = expected(&dir, "logits_per_image");
        for (r, l) in v["results"].as_array().unwrap().iter().zip(&logits) {
            let e: Vec<f32> = l[..2].iter().map(|x| x.exp()).collect();
            for p in r["predictions"].as_array().unwrap() {
                let i = labels.iter().position(|x| x == p["label"].as_str().unwrap()).unwrap();
                let want = e[i] / (e[0] + e[1]);
                assert!((p["probability"].as_f64().unwrap() as f32 - want).abs() < 1e-5);
            }
        }
    }
    let (code, v) = post(
        &format!("{base}/classify"),
        json!({"images": [b64("cat.png")], "labels": ["a"], "templates": ["no slot"]}),
    );
    assert_eq!(code, 400, "{v}");
}

/// A multipart/form-data body with `files` (field "file") and text `fields`.
fn multipart(files: &[(&str, Vec<u8>)], fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "pe-test-boundary-7d1b";
    let mut body = Vec::new();
    for (name, bytes) in files {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    for (k, v) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn send(url: &str, (ct, body): (String, Vec<u8>)) -> (u16, Value) {
    match ureq::post(url).set("Content-Type", &ct).send_bytes(&body) {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn uploads_and_openapi() {
    let Some(dir) = fixtures() else { return };
    let base = start(&dir, ServerConfig::default());
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();

    // Image files as multipart give the reference embeddings.
    let (code, v) = send(
        &format!("{base}/embed/image"),
        multipart(
            &[("cat.png", read("images/cat.png")), ("dog.png", read("images/dog.png"))],
            &[("normalize", "false")],
        ),
    );
    assert_eq!(code, 200, "{v}");
    assert!(close(&rows(&v["embeddings"]), &expected(&dir, "image_embed_native")) <= 1e-5 * 2.3);
    let (code, v) =
        send(&format!("{base}/embed/image"), multipart(&[("a.png", read("images/cat.png"))], &[("colour", "red")]));
    assert_eq!(code, 400, "{v}");

    // A video upload equals the library's normalized mean of raw frame embeddings.
    let (code, v) =
        send(&format!("{base}/embed/video"), multipart(&[("dog.mp4", read("dog.mp4"))], &[("frames", "4")]));
    assert_eq!(code, 200, "{v}");
    let cfg = ClipConfig::from_json_file(dir.join("tiny-cls.json")).unwrap();
    let model = Clip::load(&cfg, dir.join("tiny-cls.pt"), &LoadOptions::default()).unwrap();
    let t = perception_encoder::preprocess::ImageTransform::for_config(&cfg.vision);
    let clip = perception_encoder::video::load_clip(
        dir.join("dog.mp4"),
        4,
        perception_encoder::video::FrameSampling::Benchmark,
        &t,
    )
    .unwrap();
    let want =
        perception_encoder::l2_normalize(&model.encode_video(&clip.unsqueeze(0).unwrap(), false).unwrap()).unwrap();
    let want: Vec<Vec<f32>> = want.to_vec2().unwrap();
    assert!(close(&rows(&v["embeddings"]), &want) <= 1e-5);
    let (code, v) = send(&format!("{base}/embed/video"), multipart(&[("x.mp4", b"not a video".to_vec())], &[]));
    assert_eq!(code, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("video 0"), "{v}");

    // The OpenAPI document lists every route.
    let doc: Value = ureq::get(&format!("{base}/openapi.json")).call().unwrap().into_json().unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Derived from the request types: lists are non-empty, ranges are the model's.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["TextRequest"]["properties"]["texts"]["minItems"], 1);
    assert_eq!(schemas["TextRequest"]["additionalProperties"], false);
    assert_eq!(schemas["ImageRequest"]["properties"]["layer"]["minimum"], -3);
    assert_eq!(schemas["ImageUpload"]["required"], json!(["file"]));
    assert_eq!(schemas["OpenAiRequest"]["properties"]["model"]["enum"], json!(["tiny-cls"]));
    // Token id arrays get a 400 that says so, not serde's untagged-enum message.
    let (code, v) = post(&format!("{base}/v1/embeddings"), json!({"input": [[1, 2, 3]]}));
    assert_eq!(code, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("token id"), "{v}");
    for path in [
        "/features",
        "/search",
        "/similar",
        "/thumb",
        "/",
        "/health",
        "/ready",
        "/v1/models",
        "/metrics",
        "/openapi.json",
        "/v1/embeddings",
        "/embed/text",
        "/embed/image",
        "/embed/video",
        "/classify",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from /openapi.json");
    }
}

/// `/features` gives the reference's `forward_features`: the patch grid and the class token,
/// as JSON floats and as base64 float32, from JSON and from uploads; bad asks are 4xx.
#[test]
fn features_match_the_reference() {
    let Some(dir) = fixtures() else { return };
    let base = start(&dir, ServerConfig::default());
    let b64 =
        |f: &str| base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("images").join(f)).unwrap());
    let want = expected(&dir, "features_native_layer0_norm1_strip0");
    let (code, v) = post(
        &format!("{base}/features"),
        json!({"images": [b64("cat.png"), b64("dog.png")], "layer": 0, "norm": true}),
    );
    assert_eq!(code, 200, "{v}");
    let (g, width) = (v["grid"][0].as_u64().unwrap() as usize, v["width"].as_u64().unwrap() as usize);
    let tokens = g * g + 1;
    assert_eq!(want.len(), 2 * tokens);
    for (i, d) in v["data"].as_array().unwrap().iter().enumerate() {
        let cls = rows(&json!([d["cls_token"]]));
        assert!(close(&cls, &want[i * tokens..i * tokens + 1]) <= 1e-5, "image {i} class token");
        let grid: Vec<Vec<f32>> = d["patch_tokens"].as_array().unwrap().iter().flat_map(rows).collect();
        assert_eq!(grid.len(), g * g);
        assert_eq!(grid[0].len(), width);
        assert!(close(&grid, &want[i * tokens + 1..(i + 1) * tokens]) <= 1e-5, "image {i} patches");
    }
    // base64 float32 from an upload: the same numbers.
    let (code, v) = send(
        &format!("{base}/features"),
        multipart(
            &[("cat.png", std::fs::read(dir.join("images/cat.png")).unwrap())],
            &[("layer", "0"), ("norm", "true"), ("encoding_format", "base64")],
        ),
    );
    assert_eq!(code, 200, "{v}");
    let decode = |s: &Value| -> Vec<f32> {
        let b = base64::engine::general_purpose::STANDARD.decode(s.as_str().unwrap()).unwrap();
        b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    };
    let patches: Vec<Vec<f32>> = decode(&v["data"][0]["patch_tokens"]).chunks(width).map(<[f32]>::to_vec).collect();
    assert!(close(&patches, &want[1..tokens]) <= 1e-5);
    assert!(close(&[decode(&v["data"][0]["cls_token"])], &want[..1]) <= 1e-5);
    for (body, code) in [
        (json!({"images": [b64("cat.png")], "layer": 7}), 400),
        (json!({"images": []}), 400),
        (json!({"images": [b64("cat.png")], "encoding_format": "int8"}), 400),
        (json!({"images": [b64("cat.png")], "pool": true}), 400),
    ] {
        let (c, v) = post(&format!("{base}/features"), body.clone());
        assert_eq!(c, code, "{body}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
}

/// `pe serve --towers`: a server with one tower answers that tower's requests with the
/// reference's numbers and refuses the other's with a 400 naming why, before decoding an
/// upload (garbage bytes get the same answer); `/ready` lists the towers.
#[test]
fn a_server_with_one_tower_serves_it_and_refuses_the_other() {
    let Some(dir) = fixtures() else { return };
    let model_cfg = ClipConfig::from_json_file(dir.join("tiny-cls.json")).unwrap();
    let load = |towers| {
        let opts = LoadOptions { towers, ..LoadOptions::default() };
        common::serve(Clip::load(&model_cfg, dir.join("tiny-cls.pt"), &opts).unwrap(), ServerConfig::default())
    };
    let (image, text) = (load(Towers::Image), load(Towers::Text));
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("images/cat.png")).unwrap());
    let garbage = base64::engine::general_purpose::STANDARD.encode(b"not an image at all");
    let ready = |base: &str| -> Value { ureq::get(&format!("{base}/ready")).call().unwrap().into_json().unwrap() };
    assert_eq!(ready(&image)["towers"], json!(["image"]));
    assert_eq!(ready(&text)["towers"], json!(["text"]));

    let (code, v) = post(&format!("{text}/embed/text"), json!({"texts": prompts(&dir)}));
    assert_eq!(code, 200, "{v}");
    assert!(close(&rows(&v["embeddings"]), &expected(&dir, "text_embed_norm")) <= 1e-5);
    let (code, v) = post(&format!("{image}/embed/image"), json!({"images": [b64], "normalize": false}));
    assert_eq!(code, 200, "{v}");
    assert!(close(&rows(&v["embeddings"]), &expected(&dir, "image_embed_native")[..1]) <= 1e-5 * 2.3);

    let image_only = "this server loaded the image tower of tiny-cls only";
    let text_only = "this server loaded the text tower of tiny-cls only";
    let refused: [(&str, &str, Value, &str); 7] = [
        (&image, "/embed/text", json!({"texts": ["a cat"]}), image_only),
        (&image, "/v1/embeddings", json!({"input": ["a cat"]}), image_only),
        (&image, "/classify", json!({"images": [b64], "labels": ["cat", "dog"]}), image_only),
        (&text, "/embed/image", json!({"images": [garbage]}), text_only),
        (&text, "/features", json!({"images": [garbage]}), text_only),
        (&text, "/v1/embeddings", json!({"input": ["a cat", format!("data:image/png;base64,{garbage}")]}), text_only),
        (&text, "/classify", json!({"images": [b64], "labels": ["cat", "dog"]}), text_only),
    ];
    for (base, route, body, why) in refused {
        let (code, v) = post(&format!("{base}{route}"), body);
        assert_eq!(code, 400, "{route}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(why), "{route}: {message}");
    }
    let video =
        ureq::post(&format!("{text}/embed/video")).set("Content-Type", "multipart/form-data; boundary=x").send_bytes(
            b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\r\nnot a video\r\n--x--\r\n",
        );
    match video {
        Err(ureq::Error::Status(400, r)) => {
            let v: Value = r.into_json().unwrap();
            assert!(v["error"]["message"].as_str().unwrap().starts_with(text_only), "{v}");
        }
        other => panic!("a video to a text-only server: {other:?}"),
    }
}
