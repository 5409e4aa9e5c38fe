//! Hostile and odd clients against the service on 127.0.0.1: decompression bombs, uploads that
//! try to make FFmpeg open server files, huge words, oversized label sets, slow and vanishing
//! clients. Each gets a JSON 4xx (or its connection closed) and the server keeps answering.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::send;
use pe_server::ServerConfig;
use pe_testutil::fixtures;
use perception_encoder::{Clip, ClipConfig, LoadOptions};
use serde_json::{json, Value};

fn tiny(dir: &Path) -> Clip {
    let cfg = ClipConfig::from_json_file(dir.join("tiny-cls.json")).unwrap();
    Clip::load(&cfg, dir.join("tiny-cls.pt"), &LoadOptions::default()).unwrap()
}

fn post(url: &str, body: Value) -> (u16, Value) {
    common::send(ureq::post(url), Some(body))
}

/// A multipart body of files, as curl -F sends it.
fn multipart(files: &[(&str, Vec<u8>)], fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "----pe-hostile-boundary";
    let mut body = Vec::new();
    for (name, value) in fields {
        write!(body, "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").unwrap();
    }
    for (file, bytes) in files {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .unwrap();
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn upload(url: &str, files: &[(&str, Vec<u8>)], fields: &[(&str, &str)]) -> (u16, Value) {
    let (ct, body) = multipart(files, fields);
    match ureq::post(url).set("content-type", &ct).send_bytes(&body) {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("transport error: {e}"),
    }
}

fn message(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, 77]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A few hundred bytes claiming `width x height` RGB: a decompression bomb's header.
fn bomb_png(width: u32, height: u32) -> Vec<u8> {
    let mut p = png(8, 8);
    // The IHDR chunk: length at 8, type at 12, data at 16..29, CRC at 29..33.
    p[16..20].copy_from_slice(&width.to_be_bytes());
    p[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&p[12..29]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    p
}

#[test]
fn decodes_share_a_memory_budget_and_bombs_are_refused_before_decoding() {
    let Some(dir) = fixtures() else { return };
    let budget = 48u64 << 20;
    let base = common::serve(tiny(&dir), ServerConfig { decode_budget_bytes: budget, ..ServerConfig::default() });
    // Six 2000x2000 images (27 MiB each to decode) in one request: they decode within 48 MiB,
    // so one at a time, and every one is embedded.
    let big = png(2000, 2000);
    let files: Vec<(&str, Vec<u8>)> = (0..6).map(|_| ("big.png", big.clone())).collect();
    let (code, v) = upload(&format!("{base}/embed/image"), &files, &[]);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["embeddings"].as_array().unwrap().len(), 6);
    let m = common::metrics(&base);
    let peak = common::metric(&m, "pe_decode_bytes_peak").unwrap();
    // 2000 x 2000 x (3 decoded + 4 working) bytes each; two at once would pass the budget.
    assert!(peak >= 28e6 && peak <= budget as f64, "peak {peak} outside [28 MB, 48 MiB]");
    assert_eq!(common::metric(&m, "pe_decode_bytes_in_use"), Some(0.0));
    assert_eq!(common::metric(&m, "pe_decode_budget_bytes"), Some(budget as f64));

    // An image that alone needs more than the budget is refused, naming the limit.
    let (code, v) = upload(&format!("{base}/embed/image"), &[("huge.png", png(3000, 3000))], &[]);
    assert_eq!(code, 413, "{v}");
    assert!(message(&v).contains("decode budget"), "{v}");

    // Eight 13000x13000 bombs at once (the default budget, 1 GiB): all refused from their
    // headers, none decoded, and the server still answers.
    let base = common::serve(tiny(&dir), ServerConfig::default());
    let b64 = base64::engine::general_purpose::STANDARD.encode(bomb_png(13000, 13000));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (url, b64) = (format!("{base}/embed/image"), b64.clone());
            std::thread::spawn(move || post(&url, json!({"images": [b64]})))
        })
        .collect();
    for h in handles {
        let (code, v) = h.join().unwrap();
        assert_eq!(code, 413, "{v}");
        assert!(message(&v).contains("13000x13000") && message(&v).contains("decode budget"), "{v}");
    }
    let m = common::metrics(&base);
    assert_eq!(common::metric(&m, "pe_decode_bytes_peak"), Some(0.0), "a bomb was decoded");
    let cat = base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("images/cat.png")).unwrap());
    assert_eq!(post(&format!("{base}/embed/image"), json!({"images": [cat]})).0, 200);
}

/// A playlist or concat list naming a real local file: FFmpeg must not open it.
#[test]
fn video_uploads_cannot_make_ffmpeg_open_other_files() {
    let Some(dir) = fixtures() else { return };
    let base = common::serve(tiny(&dir), ServerConfig::default());
    let tmp = tempfile::tempdir().unwrap();
    let segment = tmp.path().join("seg0.ts");
    let made = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(dir.join("dog.mp4"))
        .args(["-c:v", "mpeg2video", "-q:v", "5", "-an", "-f", "mpegts"])
        .arg(&segment)
        .status()
        .unwrap();
    assert!(made.success());
    let hls = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:5\n#EXTINF:5.0,\n{}\n#EXT-X-ENDLIST\n",
        segment.display()
    );
    let concat = format!("ffconcat version 1.0\nfile '{}'\n", dir.join("dog.mp4").display());
    for (name, body) in [("clip.m3u8", hls), ("clip.mp4", concat.clone()), ("list.txt", concat)] {
        let (code, v) = upload(&format!("{base}/embed/video"), &[(name, body.into_bytes())], &[("frames", "2")]);
        assert_eq!(code, 400, "{name}: {v}");
        let msg = message(&v);
        assert!(msg.contains("not a self-contained video"), "{name}: {msg}");
        assert!(!msg.contains("/tmp") && !msg.contains(".tmp"), "a temporary path leaked: {msg}");
    }
    // The same segment uploaded itself is a video and is embedded.
    let (code, v) = upload(&format!("{base}/embed/video"), &[("seg0.ts", std::fs::read(&segment).unwrap())], &[]);
    assert_eq!(code, 200, "{v}");
}

#[test]
fn a_huge_word_is_tokenized_off_the_model_thread_in_linear_time() {
    let Some(dir) = fixtures() else { return };
    let base =
        common::serve(tiny(&dir), ServerConfig { request_timeout: Duration::from_secs(30), ..ServerConfig::default() });
    let word = "a".repeat(1 << 20);
    let url = format!("{base}/embed/text");
    let (u, w) = (url.clone(), word.clone());
    let huge = std::thread::spawn(move || post(&u, json!({"texts": [w]})));
    let others: Vec<_> = (0..4)
        .map(|i| {
            let u = url.clone();
            std::thread::spawn(move || post(&u, json!({"texts": [format!("a photo of dog number {i}")]})))
        })
        .collect();
    for h in others {
        assert_eq!(h.join().unwrap().0, 200);
    }
    let (code, v) = huge.join().unwrap();
    assert_eq!(code, 200, "{v}");
    // Cut at 2048 bytes before BPE: the same embedding as the word's first 2048 letters.
    let (_, cut) = post(&url, json!({"texts": [&word[..2048]]}));
    assert_eq!(v["embeddings"], cut["embeddings"]);
}

#[test]
fn classify_label_and_template_counts_are_bounded() {
    let Some(dir) = fixtures() else { return };
    let base = common::serve(tiny(&dir), ServerConfig { max_prompts: 500, ..ServerConfig::default() });
    let cat = base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("images/cat.png")).unwrap());
    let labels: Vec<String> = (0..100).map(|i| format!("label {i}")).collect();
    let templates: Vec<String> = (0..10).map(|i| format!("variant {i} of {{}}")).collect();
    let (code, v) =
        post(&format!("{base}/classify"), json!({"images": [cat], "labels": labels, "templates": templates}));
    assert_eq!(code, 413, "{v}");
    assert!(message(&v).contains("1000 prompts") && message(&v).contains("500"), "{v}");
    let templates: Vec<String> = (0..300).map(|i| format!("variant {i} of {{}}")).collect();
    let (code, v) =
        post(&format!("{base}/classify"), json!({"images": [cat], "labels": ["a cat"], "templates": templates}));
    assert_eq!(code, 413, "{v}");
    let (code, v) =
        post(&format!("{base}/classify"), json!({"images": [cat], "labels": ["a cat", "a dog"], "top_k": 1}));
    assert_eq!(code, 200, "{v}");
}

/// Read until the server closes the connection (or `limit` passes); returns what was read.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let (start, mut got) = (Instant::now(), Vec::new());
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(String::from_utf8_lossy(&got).into_owned()),
        }
    }
    None
}

#[test]
fn slow_and_stalled_clients_are_cut_off() {
    let Some(dir) = fixtures() else { return };
    let base = common::serve(
        tiny(&dir),
        ServerConfig {
            header_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            ..ServerConfig::default()
        },
    );
    let addr = base.trim_start_matches("http://").to_string();
    // Headers that never end, and a connection that never says anything: both closed.
    let mut partial = TcpStream::connect(&addr).unwrap();
    partial.write_all(b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Ty").unwrap();
    let mut silent = TcpStream::connect(&addr).unwrap();
    assert!(read_until_closed(&mut partial, Duration::from_secs(10)).is_some(), "partial headers kept open");
    assert!(read_until_closed(&mut silent, Duration::from_secs(10)).is_some(), "idle connection kept open");
    // A body that stops arriving: 504 once the request's time is up, and the gauge returns to 0.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled
        .write_all(b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"texts\"")
        .unwrap();
    let answer = read_until_closed(&mut stalled, Duration::from_secs(10)).expect("stalled body kept open");
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    let m = common::metrics(&base);
    assert_eq!(common::metric(&m, "pe_requests_in_flight{route=\"/embed/text\"}"), Some(0.0));
    assert_eq!(common::metric(&m, "pe_requests_total{route=\"/embed/text\",status=\"504\"}"), Some(1.0));
}

#[test]
fn protocol_details_clients_rely_on() {
    let Some(dir) = fixtures() else { return };
    let base = common::serve(tiny(&dir), ServerConfig { api_key: Some("sekrit".into()), ..ServerConfig::default() });
    // The scheme is case-insensitive (RFC 7235); the key is not.
    let (code, v) = send(ureq::get(&format!("{base}/v1/models")).set("authorization", "bearer sekrit"), None);
    assert_eq!(code, 200, "{v}");
    let (code, _) = send(ureq::get(&format!("{base}/v1/models")).set("authorization", "Bearer SEKRIT"), None);
    assert_eq!(code, 401);
    // A wrong method gets the JSON error shape too.
    let (code, v) = send(ureq::get(&format!("{base}/embed/text")).set("authorization", "Bearer sekrit"), None);
    assert_eq!(code, 405);
    assert_eq!(v["error"]["code"], 405, "{v}");
    // Base64 wrapped at 76 columns (MIME) is the same image.
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("images/cat.png")).unwrap());
    let wrapped: String =
        b64.as_bytes().chunks(76).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\r\n");
    let url = format!("{base}/embed/image");
    let (code, plain) = send(ureq::post(&url).set("authorization", "Bearer sekrit"), Some(json!({"images": [b64]})));
    assert_eq!(code, 200);
    let (code, v) = send(ureq::post(&url).set("authorization", "Bearer sekrit"), Some(json!({"images": [wrapped]})));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["embeddings"], plain["embeddings"]);
}

#[test]
fn a_request_whose_client_disconnects_is_counted() {
    let cfg = ClipConfig::preset("PE-Core-T16-384").unwrap();
    let model = Clip::random(&cfg, 3, &LoadOptions::default()).unwrap();
    let base = common::serve(model, ServerConfig::default());
    let addr = base.trim_start_matches("http://").to_string();
    let texts: Vec<String> = (0..64).map(|i| format!("caption number {i} of a long list of captions")).collect();
    let body = serde_json::to_vec(&json!({ "texts": texts })).unwrap();
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    // Wait until the request is being worked on, then hang up.
    let start = Instant::now();
    while common::metric(&common::metrics(&base), "pe_requests_in_flight{route=\"/embed/text\"}") != Some(1.0) {
        assert!(start.elapsed() < Duration::from_secs(20), "the request never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(s);
    let start = Instant::now();
    loop {
        let m = common::metrics(&base);
        if common::metric(&m, "pe_requests_total{route=\"/embed/text\",status=\"499\"}") == Some(1.0) {
            assert_eq!(common::metric(&m, "pe_requests_in_flight{route=\"/embed/text\"}"), Some(0.0));
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the dropped request was never counted:\n{m}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
