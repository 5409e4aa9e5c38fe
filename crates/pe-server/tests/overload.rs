//! A full queue answers 503 with Retry-After, every request gets exactly one response, and the
//! server recovers once the burst is over. Uses a random-weight PE-Core-T16-384 and several
//! texts per request, one per forward pass, so that each request holds the model long enough for
//! a burst to fill a one-slot queue even when the clients' threads start slowly.

mod common;

use std::time::Duration;

use pe_server::{BatchConfig, ServerConfig};
use perception_encoder::{Clip, ClipConfig, LoadOptions};
use serde_json::json;

#[test]
fn overflow_gives_503_and_recovers() {
    let cfg = ClipConfig::preset("PE-Core-T16-384").unwrap();
    let model = Clip::random(&cfg, 1, &LoadOptions::default()).unwrap();
    let server_cfg = ServerConfig {
        batch: BatchConfig { max_batch: 1, max_text_batch: 1, max_wait: Duration::from_millis(0), queue_capacity: 1 },
        ..ServerConfig::default()
    };
    let url = format!("{}/embed/text", common::serve(model, server_cfg));
    let long = "a very long caption about a photo of a dog running on the beach at sunset with waves ".repeat(3);
    let sent = 24;
    let handles: Vec<_> = (0..sent)
        .map(|_| {
            let (url, texts) = (url.clone(), vec![long.clone(); 4]);
            std::thread::spawn(move || match ureq::post(&url).send_json(json!({ "texts": texts })) {
                Ok(r) => (r.status(), None),
                Err(ureq::Error::Status(code, r)) => {
                    let retry = r.header("retry-after").map(str::to_string);
                    let body: serde_json::Value = r.into_json().unwrap();
                    assert_eq!(body["error"]["type"], "overloaded");
                    (code, retry)
                }
                Err(e) => panic!("transport error: {e}"),
            })
        })
        .collect();
    let results: Vec<(u16, Option<String>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.len(), sent, "every request got one response");
    let ok = results.iter().filter(|(c, _)| *c == 200).count();
    let busy: Vec<_> = results.iter().filter(|(c, _)| *c == 503).collect();
    assert_eq!(ok + busy.len(), sent, "only 200 and 503 expected: {results:?}");
    assert!(ok >= 1, "nothing was served");
    assert!(!busy.is_empty(), "the one-slot queue never overflowed");
    assert!(busy.iter().all(|(_, retry)| retry.as_deref() == Some("1")));
    // After the burst the server answers again.
    let r = ureq::post(&url).send_json(json!({"texts": ["a dog"]})).unwrap();
    assert_eq!(r.status(), 200);
    eprintln!("{sent} concurrent requests: {ok} served, {} refused with 503", busy.len());
}

#[test]
fn a_request_over_the_time_limit_gets_504() {
    let cfg = ClipConfig::preset("PE-Core-T16-384").unwrap();
    let model = Clip::random(&cfg, 2, &LoadOptions::default()).unwrap();
    let server_cfg = ServerConfig { request_timeout: Duration::from_millis(1), ..ServerConfig::default() };
    let url = format!("{}/embed/text", common::serve(model, server_cfg));
    let texts: Vec<String> = (0..32).map(|i| format!("caption number {i} of a long list of captions")).collect();
    match ureq::post(&url).send_json(json!({ "texts": texts })) {
        Err(ureq::Error::Status(504, r)) => {
            let body: serde_json::Value = r.into_json().unwrap();
            assert_eq!(body["error"]["type"], "timeout", "{body}");
        }
        other => panic!("expected 504, got {other:?}"),
    }
    // The server is still serving.
    let health = url.replace("/embed/text", "/health");
    assert_eq!(ureq::get(&health).call().unwrap().status(), 200);
}
