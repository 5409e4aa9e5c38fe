//! Shared by the server's test files: a server on a free loopback port.

use std::time::Duration;

use pe_server::ServerConfig;
use perception_encoder::Clip;

/// Serve `model` on 127.0.0.1 (a free port) from a background runtime; returns the base URL.
#[allow(dead_code)]
pub fn serve(model: Clip, cfg: ServerConfig) -> String {
    serve_until(model, cfg).url
}

/// A server on a background thread that stops when told.
#[allow(dead_code)]
pub struct Running {
    /// Base URL.
    pub url: String,
    /// Send to start the graceful shutdown.
    pub stop: tokio::sync::oneshot::Sender<()>,
    /// The server's result once it has stopped.
    pub done: std::thread::JoinHandle<std::io::Result<()>>,
}

/// Serve `model` on 127.0.0.1 (a free port) until [`Running::stop`] is sent.
pub fn serve_until(model: Clip, cfg: ServerConfig) -> Running {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            pe_server::serve_on(listener, model, cfg, async move {
                // A dropped sender means "serve until the process ends".
                if stopped.await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
            .await
        })
    });
    let url = format!("http://{}", rx.recv_timeout(Duration::from_secs(60)).unwrap());
    Running { url, stop, done }
}

/// The server's `/metrics` text.
#[allow(dead_code)]
pub fn metrics(base: &str) -> String {
    ureq::get(&format!("{base}/metrics")).call().unwrap().into_string().unwrap()
}

/// The value of the series `name` (metric name and labels, as printed) in `/metrics` text.
#[allow(dead_code)]
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[allow(dead_code)]
pub mod cases;

/// Send `req` (with a JSON body if given): the status and the JSON answer, errors included.
#[allow(dead_code)]
pub fn send(req: ureq::Request, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match r {
        Ok(r) => (r.status(), r.into_json().unwrap_or(serde_json::Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(serde_json::Value::Null)),
        Err(e) => panic!("transport error: {e}"),
    }
}
