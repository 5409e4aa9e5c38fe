//! `pe serve` under a real SIGTERM: a request whose body is still arriving when the signal
//! comes is answered, then the process exits 0 and the port is closed.

#![cfg(unix)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pe_testutil::fixtures;

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_cleanly() {
    let Some(dir) = fixtures() else { return };
    let mut child = Command::new(env!("CARGO_BIN_EXE_pe"))
        .args(["serve", "--addr", "127.0.0.1:0", "--config"])
        .arg(dir.join("tiny-cls.json"))
        .arg("--weights")
        .arg(dir.join("tiny-cls.pt"))
        .env_remove("PE_MODEL")
        .env_remove("PE_API_KEY")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "pe serve exited before listening");
        if let Some(url) = line.trim().split("http://").nth(1) {
            break url.to_string();
        }
    };

    let body = br#"{"texts": ["a photo of a dog."]}"#;
    let mut conn = TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /embed/text HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    conn.write_all(&body[..10]).unwrap();
    // The server has read the headers (its handler waits for the body) before the signal.
    let in_flight = "pe_requests_in_flight{route=\"/embed/text\"} 1";
    let t = Instant::now();
    while !ureq::get(&format!("http://{addr}/metrics")).call().unwrap().into_string().unwrap().contains(in_flight) {
        assert!(t.elapsed() < Duration::from_secs(20), "the request never reached the server");
        std::thread::sleep(Duration::from_millis(10));
    }

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    // The listener closes soon after the signal, however busy this machine is.
    let t = Instant::now();
    while TcpStream::connect(&addr).is_ok() {
        assert!(t.elapsed() < Duration::from_secs(20), "still accepting connections after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(child.try_wait().unwrap().is_none(), "pe serve exited with a request in flight");

    conn.write_all(&body[10..]).unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"embeddings\":[["), "{response}");

    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "pe serve did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("shutting down"), "{rest}");
}
