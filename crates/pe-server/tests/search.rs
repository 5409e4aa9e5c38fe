//! Search over an index on 127.0.0.1: `/search` (text, uploads, stored files, weights) and
//! `/similar` equal the library's own search, `/thumb` makes bounded JPEGs of indexed files
//! only, hostile requests get JSON 4xx and never open a path of their choosing, and the page
//! at `/` runs a query in a real browser (Debian's chromium, headless).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use pe_index::{Index, SearchOptions, UpdateOptions};
use pe_server::ServerConfig;
use pe_testutil::fixtures;
use perception_encoder::Clip;
use serde_json::{json, Value};

use common::{build_index, tiny};

fn post(url: &str, body: Value) -> (u16, Value) {
    common::send(ureq::post(url), Some(body))
}

fn get(url: &str) -> (u16, Value) {
    common::send(ureq::get(url), None)
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `(path, score)` of a response's results.
fn ranked(v: &Value) -> Vec<(String, f32)> {
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {v}"))
        .iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(r["rank"], i + 1);
            (r["path"].as_str().unwrap().to_string(), r["score"].as_f64().unwrap() as f32)
        })
        .collect()
}

fn library(dir: &Path, q: &[f32], k: usize) -> Vec<(String, f32)> {
    let index = Index::open(dir).unwrap();
    let hits = index.search(q, &SearchOptions::top(k)).unwrap();
    hits.into_iter().map(|h| (h.path.to_string_lossy().into_owned(), h.score)).collect()
}

fn text_vector(model: &Clip, text: &str) -> Vec<f32> {
    let ids = perception_encoder::tokenizer::ClipTokenizer::new(model.text().unwrap().config().context_length)
        .tokenize_batch(&[text.to_string()], &perception_encoder::candle_core::Device::Cpu)
        .unwrap();
    model.encode_text(&ids, true).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn assert_same(got: &[(String, f32)], want: &[(String, f32)]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.0, w.0);
        assert!((g.1 - w.1).abs() <= 1e-6, "{} scored {} not {}", g.0, g.1, w.1);
    }
}

#[test]
fn search_similar_and_thumbnails_answer_as_the_library_and_refuse_what_is_not_indexed() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = build_index(&fx, tmp.path());
    let photos = dir.parent().unwrap().to_path_buf();
    let base = common::serve(tiny(&fx), ServerConfig { index: Some(dir.clone()), ..ServerConfig::default() });
    let model = tiny(&fx);

    // Text, in rclip's grammar: the library's ranking and scores.
    let (code, v) = post(&format!("{base}/search"), json!({"query": "a photo of a cat", "top_k": 100}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["method"], "exact");
    assert_same(&ranked(&v), &library(&dir, &text_vector(&model, "a photo of a cat"), 100));
    let (code, v) = post(&format!("{base}/search"), json!({"query": "2:a cat - a dog", "top_k": 3}));
    assert_eq!(code, 200, "{v}");
    let (c, d) = (text_vector(&model, "a cat"), text_vector(&model, "a dog"));
    let q = pe_index::query::combine(&[(2.0, c), (-1.0, d)]).unwrap();
    assert_same(&ranked(&v), &library(&dir, &q, 3));

    // An uploaded image (multipart and base64) finds its own file first.
    let cat = std::fs::read(photos.join("cat.png")).unwrap();
    let boundary = "pe-search-test";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"top_k\"\r\n\r\n2\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cat.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&cat);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = ureq::post(&format!("{base}/search"))
        .set("content-type", &format!("multipart/form-data; boundary={boundary}"))
        .send_bytes(&body)
        .unwrap();
    let v: Value = r.into_json().unwrap();
    let got = ranked(&v);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, photos.join("cat.png").to_string_lossy());
    assert!((got[0].1 - 1.0).abs() < 1e-5, "{got:?}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&cat);
    let (code, v) = post(
        &format!("{base}/search"),
        json!({"terms": [{"image": format!("data:image/png;base64,{b64}")}], "top_k": 2}),
    );
    assert_eq!(code, 200, "{v}");
    assert_same(&ranked(&v), &got);

    // A stored file as a term, and /similar: the same neighbours, itself left out by /similar.
    let cat_path = photos.join("cat.png").to_string_lossy().into_owned();
    let (code, v) = post(&format!("{base}/search"), json!({"terms": [{"path": cat_path}], "top_k": 6}));
    assert_eq!(code, 200, "{v}");
    let by_path = ranked(&v);
    assert_eq!(by_path[0].0, cat_path);
    let (code, v) = get(&format!("{base}/similar?top_k=5&path={}", enc(&cat_path)));
    assert_eq!(code, 200, "{v}");
    assert_same(&ranked(&v), &by_path[1..]);

    // Under a folder, and a threshold.
    let (code, v) = post(&format!("{base}/search"), json!({"query": "cat", "under": "/nowhere", "top_k": 5}));
    assert_eq!((code, ranked(&v).len()), (200, 0), "{v}");
    let (code, v) = post(&format!("{base}/search"), json!({"terms": [{"path": cat_path}], "threshold": 0.999}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(ranked(&v).iter().map(|r| r.0.clone()).collect::<Vec<_>>(), vec![cat_path.clone()]);

    // Thumbnails: a JPEG no larger than asked, of an indexed file only.
    let r = ureq::get(&format!(
        "{base}/thumb?size=64&path={}",
        enc(&photos.join("Rock-climbing-Canada-1920x1147.jpg").to_string_lossy())
    ))
    .call()
    .unwrap();
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    let mut jpeg = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut jpeg).unwrap();
    let info = perception_encoder::preprocess::probe(&jpeg, 1 << 20).unwrap();
    assert_eq!((info.width, info.height), (64, 38), "the long side scaled to 64, the aspect kept");

    // Hostile: paths the index does not hold are never opened; bad options are 4xx with JSON.
    let secret = tmp.path().join("secret.png");
    std::fs::copy(photos.join("dog.png"), &secret).unwrap();
    for p in [
        secret.to_string_lossy().into_owned(),
        "/etc/passwd".into(),
        format!("{}/../secret.png", photos.display()),
        "photos/cat.png".into(),
    ] {
        let (code, v) = get(&format!("{base}/thumb?path={}", enc(&p)));
        assert_eq!(code, 404, "{p}: {v}");
        let (code, v) = get(&format!("{base}/similar?path={}", enc(&p)));
        assert_eq!(code, 404, "{p}: {v}");
        let (code, v) = post(&format!("{base}/search"), json!({"terms": [{"path": p}]}));
        assert_eq!(code, 404, "{p}: {v}");
    }
    // A query naming a file is text, never read: the same results as any other text.
    let (code, v) = post(&format!("{base}/search"), json!({"query": secret.to_string_lossy(), "top_k": 100}));
    assert_eq!(code, 200, "{v}");
    assert_same(&ranked(&v), &library(&dir, &text_vector(&model, &secret.to_string_lossy()), 100));
    let bad: Vec<(Value, u16, &str)> = vec![
        (json!({}), 400, "nothing to search for"),
        (json!({"query": "cat", "top_k": 0}), 400, "top_k"),
        (json!({"query": "cat", "top_k": 1_000_000_000u64}), 400, "top_k"),
        (json!({"query": "cat", "threshold": 7}), 400, "threshold"),
        (json!({"query": "cat", "under": "relative/dir"}), 400, "absolute"),
        (json!({"query": "- cat"}), 400, "negative"),
        (json!({"query": "cat +"}), 400, "operator"),
        (json!({"terms": [{"text": "cat", "path": "/x"}]}), 400, "exactly one"),
        (json!({"terms": [{"text": "cat", "weight": 0}]}), 400, "weight"),
        (json!({"terms": [{"image": "not base64!"}]}), 400, "base64"),
        (
            json!({"terms": [{"image": base64::engine::general_purpose::STANDARD.encode(b"GIF89a garbage")}]}),
            400,
            "image 0",
        ),
        (json!({"terms": (0..17).map(|i| json!({"text": format!("t{i}")})).collect::<Vec<_>>()}), 413, "terms"),
        (json!({"query": "cat", "limit": 3}), 400, "unknown field"),
    ];
    for (body, status, needle) in bad {
        let (code, v) = post(&format!("{base}/search"), body.clone());
        assert_eq!(code, status, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap_or_default().contains(needle), "{body}: {v}");
    }
    for q in ["size=0&path=/x", "size=100000&path=/x", "path=", "nopath=1"] {
        let (code, v) = get(&format!("{base}/thumb?{q}"));
        assert!(code == 400 || code == 404, "{q}: {code} {v}");
    }
    let (code, _) = get(&format!("{base}/health"));
    assert_eq!(code, 200, "the server is still up");

    // A video added to the index: its thumbnail is its middle frame.
    if perception_encoder::video::available() {
        std::fs::copy(fx.join("dog.mp4"), photos.join("dog.mp4")).unwrap();
        let mut index = Index::open(&dir).unwrap();
        let mut opts = UpdateOptions::default();
        opts.scan.videos = true;
        let report =
            index.update(&pe_index::LazyModel::of(&model), std::slice::from_ref(&photos), &opts, &mut |_| {}).unwrap();
        assert_eq!(report.embedded, 1);
        let r = ureq::get(&format!("{base}/thumb?size=48&path={}", enc(&photos.join("dog.mp4").to_string_lossy())))
            .call()
            .unwrap();
        let mut jpeg = Vec::new();
        std::io::Read::read_to_end(&mut r.into_reader(), &mut jpeg).unwrap();
        let info = perception_encoder::preprocess::probe(&jpeg, 1 << 20).unwrap();
        assert_eq!(info.width.max(info.height), 48);
    } else {
        assert!(!std::env::var("PE_REQUIRE_FIXTURES").is_ok_and(|v| v == "1"), "PE_REQUIRE_FIXTURES=1 but no FFmpeg");
    }

    // Without an index, the search routes say so.
    let plain = common::serve(tiny(&fx), ServerConfig::default());
    let (code, v) = post(&format!("{plain}/search"), json!({"query": "cat"}));
    assert_eq!(code, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("--index"), "{v}");
}

/// An index served with the text tower alone (`pe serve --index DIR --towers text`): text and
/// stored-file queries answer as with both towers; an uploaded image is a 400 before decoding.
#[test]
fn an_index_served_with_the_text_tower_alone_searches_by_text_and_stored_files() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = build_index(&fx, tmp.path());
    let photos = dir.parent().unwrap().to_path_buf();
    let cfg = perception_encoder::ClipConfig::from_json_file(fx.join("tiny-cls.json")).unwrap();
    let opts = perception_encoder::LoadOptions { towers: perception_encoder::Towers::Text, ..Default::default() };
    let text_only = Clip::load(&cfg, fx.join("tiny-cls.pt"), &opts).unwrap();
    let base = common::serve(text_only, ServerConfig { index: Some(dir.clone()), ..ServerConfig::default() });
    let (code, v) = post(&format!("{base}/search"), json!({"query": "a photo of a cat", "top_k": 100}));
    assert_eq!(code, 200, "{v}");
    assert_same(&ranked(&v), &library(&dir, &text_vector(&tiny(&fx), "a photo of a cat"), 100));
    let cat = photos.join("cat.png").to_string_lossy().into_owned();
    let (code, v) = post(&format!("{base}/search"), json!({"terms": [{"path": cat}, {"text": "a dog"}], "top_k": 3}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(ranked(&v).len(), 3);
    let garbage = base64::engine::general_purpose::STANDARD.encode(b"not an image");
    let (code, v) = post(&format!("{base}/search"), json!({"terms": [{"image": garbage}], "top_k": 2}));
    assert_eq!(code, 400, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("this server loaded the text tower of tiny-cls only"), "{message}");
}

/// The chromium binary: `PE_CHROMIUM`, else `chromium` on the PATH. Missing, the test is
/// skipped with a message, unless `PE_REQUIRE_FIXTURES=1` (CI, which installs it).
fn chromium() -> Option<PathBuf> {
    let candidates = std::env::var_os("PE_CHROMIUM").map(PathBuf::from).into_iter().chain(
        std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
    );
    let found = candidates.into_iter().find(|p| p.is_file());
    if found.is_none() {
        assert!(
            !std::env::var("PE_REQUIRE_FIXTURES").is_ok_and(|v| v == "1"),
            "PE_REQUIRE_FIXTURES=1 but no chromium (apt-get install chromium, or set PE_CHROMIUM)"
        );
        eprintln!("skipping: no chromium on the PATH (set PE_CHROMIUM)");
    }
    found
}

fn dump_dom(chromium: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=10000", "--timeout=60000", "--dump-dom", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `data-path` and `data-loaded` of each result card in a dumped DOM, in page order.
fn cards(dom: &str) -> Vec<(String, String)> {
    dom.split("<a class=\"card\"")
        .skip(1)
        .map(|card| {
            let attr = |name: &str| {
                card.split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                    .unwrap_or_default()
                    .replace("&amp;", "&")
            };
            (attr("data-path"), attr("data-loaded"))
        })
        .collect()
}

#[test]
fn the_page_runs_a_query_and_shows_thumbnails_in_a_real_browser() {
    let Some(fx) = fixtures() else { return };
    let Some(chromium) = chromium() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = build_index(&fx, tmp.path());
    let base = common::serve(tiny(&fx), ServerConfig { index: Some(dir.clone()), ..ServerConfig::default() });
    let model = tiny(&fx);

    let dom = dump_dom(&chromium, &format!("{base}/?q=a%20photo%20of%20a%20cat"));
    let shown = cards(&dom);
    let want = library(&dir, &text_vector(&model, "a photo of a cat"), 24);
    assert_eq!(
        shown.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
        want.iter().map(|w| w.0.clone()).collect::<Vec<_>>(),
        "{dom}"
    );
    for (path, loaded) in &shown {
        let (w, h) = loaded.split_once('x').unwrap_or_else(|| panic!("{path}: thumbnail not loaded ({loaded:?})"));
        let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
        assert!(w > 0 && h > 0 && w.max(h) <= 256, "{path}: {w}x{h}");
    }

    // Clicking a result searches by it: the page's link for a card is ?similar=PATH.
    let cat = dir.parent().unwrap().join("cat.png").to_string_lossy().into_owned();
    let dom = dump_dom(&chromium, &format!("{base}/?similar={}", enc(&cat)));
    let shown: Vec<String> = cards(&dom).into_iter().map(|c| c.0).collect();
    let (_, v) = get(&format!("{base}/similar?top_k=24&path={}", enc(&cat)));
    assert_eq!(shown, ranked(&v).into_iter().map(|r| r.0).collect::<Vec<_>>());
    assert!(!shown.contains(&cat) && shown.len() == pe_testutil::FIXTURE_IMAGES.len() - 1);
}
