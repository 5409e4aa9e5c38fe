//! A loopback stand-in for the Hugging Face hub: serves files in the hub's URL layout
//! (`/{repo}/resolve/{revision}/{file}` with `ETag`, `X-Repo-Commit` and byte ranges), logs
//! each request, and can cut a transfer short or accept and never answer.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// The commit every served file claims.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The URL path.
    pub path: String,
    /// The `Range` header.
    pub range: Option<String>,
    /// The `Authorization` header.
    pub auth: Option<String>,
}

/// How the server behaves.
#[derive(Debug, Clone, Copy, Default)]
pub enum Mode {
    /// Answer every request fully.
    #[default]
    Normal,
    /// Send only this many body bytes of the first full download, then close.
    CutAt(usize),
    /// Accept connections and never answer.
    Hang,
}

/// Serve `files` (URL path, bytes) on 127.0.0.1 until the process ends; returns the endpoint
/// (`http://127.0.0.1:PORT`) and the request log.
pub fn serve(files: Vec<(String, Vec<u8>)>, mode: Mode) -> (String, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local address");
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut cut = matches!(mode, Mode::CutAt(_));
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if let Mode::Hang = mode {
                held.push(stream);
                continue;
            }
            let Ok(clone) = stream.try_clone() else { continue };
            let mut reader = BufReader::new(clone);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let (mut range, mut auth) = (None, None);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap_or((&h, ""));
                match k.trim().to_ascii_lowercase().as_str() {
                    "range" => range = Some(v.trim().to_string()),
                    "authorization" => auth = Some(v.trim().to_string()),
                    _ => {}
                }
            }
            log2.lock().unwrap_or_else(|e| e.into_inner()).push(Request {
                path: path.clone(),
                range: range.clone(),
                auth,
            });
            let Some((_, body)) = files.iter().find(|(p, _)| *p == path) else {
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            };
            let n = body.len();
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(0)
                .min(n);
            let end = match range.as_deref() {
                Some("bytes=0-0") => 0,
                _ => n - 1,
            };
            let chunk = &body[start..=end.max(start)];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{n}\r\n\
                 ETag: \"etag-{n}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
                chunk.len()
            );
            let _ = stream.write_all(head.as_bytes());
            match mode {
                Mode::CutAt(k) if cut && chunk.len() > 1 => {
                    cut = false;
                    let _ = stream.write_all(&chunk[..k.min(chunk.len())]);
                }
                _ => {
                    let _ = stream.write_all(chunk);
                }
            }
        }
    });
    (format!("http://{addr}"), log)
}
