//! Graceful shutdown: requests queued for the model when the signal comes are all answered,
//! the listener then refuses new connections, and a client that never finishes its request
//! cannot hold the server past the grace period.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use pe_server::{BatchConfig, ServerConfig};
use perception_encoder::{Clip, ClipConfig, LoadOptions};
use serde_json::{json, Value};

/// (`/embed/text` requests the server has received, requests queued for the model).
fn received_and_queued(base: &str) -> (usize, usize) {
    let text = common::metrics(base);
    // A series not yet printed counts 0.
    let count = |name: &str| common::metric(&text, name).unwrap_or(0.0) as usize;
    let route = "{route=\"/embed/text\"";
    let answered = count(&format!("pe_requests_total{route},status=\"200\"}}"));
    let in_flight = count(&format!("pe_requests_in_flight{route}}}"));
    (answered + in_flight, count("pe_queue_depth"))
}

#[test]
fn in_flight_requests_finish_and_then_the_server_stops() {
    // A random T16 at 384 px with one text per forward pass and several texts per request: slow
    // enough to keep a queue while the last client connects.
    let cfg = ClipConfig::preset("PE-Core-T16-384").unwrap();
    let model = Clip::random(&cfg, 3, &LoadOptions::default()).unwrap();
    let server_cfg = ServerConfig {
        batch: BatchConfig { max_batch: 1, max_text_batch: 1, max_wait: Duration::ZERO, queue_capacity: 64 },
        ..ServerConfig::default()
    };
    let server = common::serve_until(model, server_cfg);
    let base = server.url.clone();
    let long = "a very long caption about a photo of a dog running on the beach at sunset with waves ".repeat(3);
    let (n, texts_per_request) = (6, 8);
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let url = format!("{base}/embed/text");
            let texts: Vec<String> = (0..texts_per_request).map(|j| format!("{i} {j} {long}")).collect();
            std::thread::spawn(move || -> (u16, Value) {
                let r = ureq::post(&url).send_json(json!({"texts": texts})).unwrap();
                (r.status(), r.into_json().unwrap())
            })
        })
        .collect();
    // Wait until every client's request has reached the server (one still connecting when the
    // signal comes is refused, rightly) and some are queued behind the model, then signal.
    let t = Instant::now();
    loop {
        let (received, queued) = received_and_queued(&base);
        if received == n && queued >= 2 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{received} of {n} requests received, {queued} queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.stop.send(()).unwrap();
    for c in clients {
        let (status, body) = c.join().unwrap();
        assert_eq!(status, 200);
        let embeddings = body["embeddings"].as_array().unwrap();
        assert_eq!(embeddings.len(), texts_per_request, "{body}");
        assert!(embeddings.iter().all(|e| e.as_array().unwrap().len() == 512), "{body}");
    }
    server.done.join().unwrap().unwrap();
    let after = ureq::get(&format!("{base}/health")).timeout(Duration::from_secs(5)).call();
    assert!(matches!(after, Err(ureq::Error::Transport(_))), "the listener still answers after shutdown");
}

#[test]
fn a_stalled_client_cannot_hold_the_server_past_the_grace_period() {
    let cfg = ClipConfig::preset("PE-Core-T16-384").unwrap();
    let model = Clip::random(&cfg, 3, &LoadOptions::default()).unwrap();
    let server_cfg = ServerConfig { shutdown_grace: Duration::from_millis(500), ..ServerConfig::default() };
    let server = common::serve_until(model, server_cfg);
    let addr = server.url.trim_start_matches("http://").to_string();
    // Headers promise a body that never comes.
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    write!(stalled, "POST /embed/text HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"te").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    server.stop.send(()).unwrap();
    server.done.join().unwrap().unwrap();
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(400), "did not wait for the request in flight ({waited:?})");
    assert!(waited < Duration::from_secs(10), "held past the grace period ({waited:?})");
    drop(stalled);
}
