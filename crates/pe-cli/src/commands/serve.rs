//! `pe serve`: the HTTP service (see the `pe-server` crate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use pe_server::{BatchConfig, ServerConfig};

use crate::args::ModelArgs;
use perception_encoder::Towers;

/// Arguments of `pe serve`.
#[derive(Debug, clap::Args)]
pub struct ServeCmd {
    #[command(flatten)]
    pub(crate) threads: crate::args::ThreadsArg,
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, env = "PE_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 64)]
    max_text_batch: usize,
    /// How long a request waits for others to share its batch, in milliseconds.
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Requests queued at most; beyond that the server answers 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// Items (images or texts) per request.
    #[arg(long, default_value_t = 256)]
    max_items: usize,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 32)]
    max_body_mb: usize,
    /// Largest image in pixels.
    #[arg(long, default_value_t = perception_encoder::preprocess::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Time limit per request in seconds, from its headers to its answer.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
    /// Seconds a connection may take to send a request's headers (and may stay idle between requests).
    #[arg(long, default_value_t = 10)]
    header_timeout_s: u64,
    /// Connections served at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Memory image and video decoding may hold at once, in MiB; an input needing more gets 413.
    #[arg(long, default_value_t = 1024)]
    decode_budget_mb: u64,
    /// Labels x templates one /classify request may ask to embed.
    #[arg(long, default_value_t = 10_000)]
    max_prompts: usize,
    /// After SIGTERM or Ctrl-C, how long requests in flight may take before the server stops anyway.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_s: u64,
    /// Require `Authorization: Bearer <KEY>` on every route but /health (and the page at /).
    #[arg(long, env = "PE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Serve searches over this index (`pe index`): POST /search, GET /similar, GET /thumb and
    /// a web page at /. The model, precision and transform are the index's own.
    #[arg(long, conflicts_with_all = ["model", "config", "weights"])]
    index: Option<PathBuf>,
    /// The towers to load: `image` serves images, videos and features; `text` serves texts (and
    /// an index's searches by text or indexed path) in a fraction of the memory (PE-Core-G14-448:
    /// 2.2 GB of 9.7); a request needing the other tower gets 400.
    #[arg(long, value_enum, default_value_t = TowersArg::Both)]
    towers: TowersArg,
}

/// `--towers`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TowersArg {
    Both,
    Image,
    Text,
}

impl From<TowersArg> for Towers {
    fn from(t: TowersArg) -> Self {
        match t {
            TowersArg::Both => Towers::Both,
            TowersArg::Image => Towers::Image,
            TowersArg::Text => Towers::Text,
        }
    }
}

pub fn run(cmd: ServeCmd) -> anyhow::Result<ExitCode> {
    // Bound first: an address in use is found before a model of gigabytes loads.
    let listener = std::net::TcpListener::bind(cmd.addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cmd.addr))?;
    let model = match &cmd.index {
        Some(dir) => {
            // Refused here, before the model loads: no index, another version, a damaged one.
            let index = pe_index::Index::open(dir)?;
            let (_, searchable, _, _) = index.catalog().counts()?;
            eprintln!("pe: index {} holds {searchable} searchable files", dir.display());
            super::index::load_model(index.manifest(), dir, cmd.towers.into())?
        }
        None => cmd.model.load(cmd.towers.into())?,
    };
    let cfg = ServerConfig {
        addr: cmd.addr,
        batch: BatchConfig {
            max_batch: cmd.max_batch,
            max_text_batch: cmd.max_text_batch,
            max_wait: Duration::from_millis(cmd.max_wait_ms),
            queue_capacity: cmd.queue,
        },
        max_body_bytes: cmd.max_body_mb << 20,
        max_pixels: cmd.max_pixels,
        max_items: cmd.max_items,
        request_timeout: Duration::from_secs(cmd.timeout_s),
        header_timeout: Duration::from_secs(cmd.header_timeout_s.max(1)),
        max_connections: cmd.max_connections,
        decode_budget_bytes: cmd.decode_budget_mb.saturating_mul(1 << 20),
        max_prompts: cmd.max_prompts,
        api_key: cmd.api_key.filter(|k| !k.is_empty()),
        shutdown_grace: Duration::from_secs(cmd.shutdown_grace_s),
        index: cmd.index.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        eprintln!("pe: serving {} on http://{}", model.config().name, listener.local_addr()?);
        pe_server::serve_on(listener, model, cfg, shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM: stop accepting, finish what is in flight.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("pe: shutting down after in-flight requests");
}
