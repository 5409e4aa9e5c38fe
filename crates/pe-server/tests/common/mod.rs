//! Shared by the server's test files: a server on a free loopback port.

use std::time::Duration;

use pe_server::ServerConfig;
use perception_encoder::Clip;

/// Serve `model` on 127.0.0.1 (a free port) from a background runtime; returns the base URL.
pub fn serve(model: Clip, cfg: ServerConfig) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            pe_server::serve_on(listener, model, cfg, std::future::pending()).await.unwrap();
        });
    });
    format!("http://{}", rx.recv_timeout(Duration::from_secs(60)).unwrap())
}
