//! Official checkpoints by model name from the Hugging Face hub, as the reference's
//! `fetch_pe_checkpoint` does: `facebook/<name>` / `<name>.pt`, kept in the standard hub cache
//! (the Python client's layout: `models--facebook--<name>/blobs/<etag>`, a `snapshots/<commit>/`
//! link to it and `refs/main`, so both share downloads).
//!
//! Environment, as the Python hub client reads it: `HF_HOME` (cache at `$HF_HOME/hub`),
//! `HF_HUB_CACHE` (the cache itself), `HF_ENDPOINT` (another hub or a mirror), `HF_TOKEN`
//! (else the token file in `HF_HOME`), `HF_HUB_OFFLINE` (never touch the network; only a
//! cached copy is used), `HF_HUB_ETAG_TIMEOUT` (seconds for the first answer, default 10) and
//! `HF_HUB_DOWNLOAD_TIMEOUT` (seconds without a byte before a download fails, default 10). A
//! cached copy is reused without asking the hub again; an interrupted download resumes.
//!
//! We speak HTTP with `ureq` (the client the `hf-hub` crate also uses) rather than through
//! `hf-hub` 0.4: its blocking client has no connect or read timeouts (a hub that accepts and
//! never answers hung `pe` forever) and reports progress only as a terminal bar.

#[cfg(feature = "hub")]
use std::path::Path;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The hub organisation that publishes PE.
pub const HUB_ORG: &str = "facebook";

/// `(repo id, file name)` of a model's official checkpoint.
///
/// ```
/// assert_eq!(perception_encoder::hub::checkpoint_location("PE-Core-B16-224"),
///            ("facebook/PE-Core-B16-224".to_string(), "PE-Core-B16-224.pt".to_string()));
/// ```
pub fn checkpoint_location(model: &str) -> (String, String) {
    (format!("{HUB_ORG}/{model}"), format!("{model}.pt"))
}

/// What a download reports as it goes; `()` reports nothing.
pub trait Progress {
    /// A download of `file` starts: `total` bytes, of which `done` are already here (resumed).
    fn start(&mut self, file: &str, total: u64, done: u64);
    /// `bytes` more arrived.
    fn advance(&mut self, bytes: u64);
    /// The download is complete.
    fn finish(&mut self);
}

impl Progress for () {
    fn start(&mut self, _: &str, _: u64, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

fn truthy(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// Whether `HF_HUB_OFFLINE` forbids network access.
pub fn offline() -> bool {
    truthy("HF_HUB_OFFLINE")
}

fn hf_home() -> PathBuf {
    match std::env::var_os("HF_HOME") {
        Some(h) => PathBuf::from(h),
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
            home.join(".cache").join("huggingface")
        }
    }
}

/// The hub cache directory (`HF_HUB_CACHE`, else `$HF_HOME/hub`).
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(d) => PathBuf::from(d),
        None => hf_home().join("hub"),
    }
}

fn repo_dir(repo: &str) -> PathBuf {
    cache_dir().join(format!("models--{}", repo.replace('/', "--")))
}

/// The cached copy of `file` of `repo` (the snapshot `refs/main` names), if there is one.
pub fn cached(repo: &str, file: &str) -> Option<PathBuf> {
    let dir = repo_dir(repo);
    let commit = std::fs::read_to_string(dir.join("refs").join("main")).ok()?;
    let path = dir.join("snapshots").join(commit.trim()).join(file);
    path.is_file().then_some(path)
}

#[cfg(feature = "hub")]
fn token() -> Option<String> {
    let t = std::env::var("HF_TOKEN").ok().or_else(|| std::fs::read_to_string(hf_home().join("token")).ok())?;
    let t = t.trim().to_string();
    (!t.is_empty()).then_some(t)
}

#[cfg(feature = "hub")]
fn seconds(var: &str, default: u64) -> std::time::Duration {
    let s = std::env::var(var).ok().and_then(|v| v.trim().parse::<f64>().ok()).filter(|s| *s > 0.0 && s.is_finite());
    std::time::Duration::from_secs_f64(s.unwrap_or(default as f64))
}

/// The local path of `file` in hub repository `repo`, downloading it into the cache unless a
/// cached copy exists; `progress` hears how the download goes.
pub fn fetch(repo: &str, file: &str, progress: &mut dyn Progress) -> Result<PathBuf> {
    if let Some(path) = cached(repo, file) {
        tracing::debug!(path = %path.display(), "using the cached copy");
        return Ok(path);
    }
    let hub_err = |reason: String| Error::Hub { repo: repo.to_string(), file: file.to_string(), reason };
    if offline() {
        return Err(hub_err(format!(
            "not in the cache at {} and HF_HUB_OFFLINE is set (fill the cache with `pe download` where the hub \
             is reachable, or pass the checkpoint with --weights FILE)",
            cache_dir().display()
        )));
    }
    download(repo, file, progress).map_err(hub_err)
}

/// The official checkpoint of a preset, from the cache or the hub.
pub fn fetch_checkpoint(model: &str, progress: &mut dyn Progress) -> Result<PathBuf> {
    let (repo, file) = checkpoint_location(model);
    fetch(&repo, &file, progress)
}

/// Without the `hub` feature nothing is downloaded: only `--weights` files can be used.
#[cfg(not(feature = "hub"))]
fn download(_: &str, _: &str, _: &mut dyn Progress) -> std::result::Result<PathBuf, String> {
    Err("this build has no hub support (feature `hub`); pass a checkpoint file instead".into())
}

/// Where the file's bytes are, and what the hub says about them.
#[cfg(feature = "hub")]
struct Remote {
    url: String,
    commit: String,
    etag: String,
    size: u64,
}

#[cfg(feature = "hub")]
fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .map_or_else(|_| "https://huggingface.co".to_string(), |e| e.trim_end_matches('/').to_string())
}

#[cfg(feature = "hub")]
fn unreachable(endpoint: &str, e: &ureq::Error) -> String {
    match e {
        ureq::Error::Status(401 | 403, _) => {
            format!("{endpoint} refused access ({e}); set HF_TOKEN to a token that may read this repository")
        }
        ureq::Error::Status(404, _) => format!("not found on {endpoint} ({e})"),
        _ => format!(
            "cannot reach the hub at {endpoint}: {e}. Download the checkpoint elsewhere and pass it with \
             --weights FILE, or set HF_HUB_OFFLINE=1 to use only the cache at {}",
            cache_dir().display()
        ),
    }
}

#[cfg(feature = "hub")]
/// Ask the hub for the file's commit, etag and size (a one-byte range, following the hub's own
/// relative redirects; an absolute redirect is where the bytes are).
fn locate(agent: &ureq::Agent, repo: &str, file: &str, token: Option<&str>) -> std::result::Result<Remote, String> {
    let endpoint = endpoint();
    let mut url = format!("{endpoint}/{repo}/resolve/main/{file}");
    let get = |url: &str, auth: bool| {
        let mut r = agent.get(url).set("Range", "bytes=0-0").timeout(seconds("HF_HUB_ETAG_TIMEOUT", 10));
        if let (true, Some(t)) = (auth, token) {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        r.call().map_err(|e| unreachable(&endpoint, &e))
    };
    for _ in 0..10 {
        let resp = get(&url, true)?;
        let location = resp.header("location").map(str::to_string);
        if (300..400).contains(&resp.status()) {
            if let Some(loc) = location.as_deref().filter(|l| l.starts_with('/')) {
                url = format!("{endpoint}{loc}");
                continue;
            }
        }
        let header = |name: &str| resp.header(name).map(|v| v.trim_matches('"').to_string());
        let commit = header("x-repo-commit").ok_or("the hub's answer has no X-Repo-Commit header")?;
        let etag = header("x-linked-etag").or_else(|| header("etag")).ok_or("the hub's answer has no ETag header")?;
        if etag.is_empty() || etag.contains(['/', '\\']) || etag.contains("..") {
            return Err(format!("the hub's ETag {etag:?} cannot name a file"));
        }
        let (url, sized) = match location.filter(|_| (300..400).contains(&resp.status())) {
            // The bytes live elsewhere (a CDN): ask there for the size, without our token.
            Some(loc) => {
                let r = get(&loc, false)?;
                (loc, r.header("content-range").map(str::to_string))
            }
            None => (url, resp.header("content-range").map(str::to_string)),
        };
        let size = sized
            .as_deref()
            .and_then(|r| r.rsplit('/').next())
            .and_then(|s| s.trim().parse().ok())
            .ok_or("the hub's answer has no usable Content-Range header")?;
        return Ok(Remote { url, commit, etag, size });
    }
    Err("too many redirects".into())
}

#[cfg(feature = "hub")]
fn download(repo: &str, file: &str, progress: &mut dyn Progress) -> std::result::Result<PathBuf, String> {
    let agent = ureq::AgentBuilder::new()
        .try_proxy_from_env(true)
        .timeout_connect(seconds("HF_HUB_ETAG_TIMEOUT", 10))
        .timeout_read(seconds("HF_HUB_DOWNLOAD_TIMEOUT", 10))
        .redirects(0)
        .build();
    let token = token();
    let remote = locate(&agent, repo, file, token.as_deref())?;
    let dir = repo_dir(repo);
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    let blobs = dir.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(|e| io("creating", &blobs, e))?;
    let blob = blobs.join(&remote.etag);
    if !blob.is_file() {
        // One download of a blob at a time (two `pe` processes may start together).
        let lock_path = blobs.join(format!("{}.lock", remote.etag));
        let lock = std::fs::File::create(&lock_path).map_err(|e| io("creating", &lock_path, e))?;
        lock.lock().map_err(|e| io("locking", &lock_path, e))?;
        if !blob.is_file() {
            fetch_blob(&agent, &remote, &blob, file, token.as_deref(), progress)?;
        }
        // The lock file stays: removing it would let a third process lock a new file while a
        // second still waits on the old one.
        drop(lock);
    }
    let snapshot = dir.join("snapshots").join(&remote.commit);
    std::fs::create_dir_all(&snapshot).map_err(|e| io("creating", &snapshot, e))?;
    let pointer = snapshot.join(file);
    if !pointer.is_file() {
        link(&blob, &pointer, &remote.etag).map_err(|e| io("linking", &pointer, e))?;
    }
    let refs = dir.join("refs");
    std::fs::create_dir_all(&refs).map_err(|e| io("creating", &refs, e))?;
    std::fs::write(refs.join("main"), &remote.commit).map_err(|e| io("writing", &refs.join("main"), e))?;
    Ok(pointer)
}

#[cfg(feature = "hub")]
/// The snapshot entry points at the blob (a relative link, as the Python client makes).
fn link(blob: &Path, pointer: &Path, etag: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let _ = blob;
        std::os::unix::fs::symlink(Path::new("../../blobs").join(etag), pointer)
    }
    #[cfg(not(unix))]
    {
        let _ = etag;
        std::fs::copy(blob, pointer).map(|_| ())
    }
}

#[cfg(feature = "hub")]
/// Download into `<blob>.incomplete` (resuming what an earlier run left), retrying a broken
/// transfer a few times, then rename into place once the size is right.
fn fetch_blob(
    agent: &ureq::Agent,
    remote: &Remote,
    blob: &Path,
    file: &str,
    token: Option<&str>,
    progress: &mut dyn Progress,
) -> std::result::Result<(), String> {
    use std::io::{Read, Write};
    let part = blob.with_extension("incomplete");
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .map_err(|e| format!("writing {}: {e}", part.display()))?;
    let mut done = out.metadata().map_err(|e| e.to_string())?.len();
    if done > remote.size {
        out.set_len(0).map_err(|e| e.to_string())?;
        done = 0;
    }
    progress.start(file, remote.size, done);
    let mut failures = 0;
    let mut buf = vec![0u8; 1 << 20];
    while done < remote.size {
        let mut req = agent.get(&remote.url).set("Range", &format!("bytes={done}-"));
        // The token goes to the hub only, never to a CDN it redirects to.
        if let Some(t) = token.filter(|_| remote.url.starts_with(&endpoint())) {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let result = req.call().map_err(|e| e.to_string()).and_then(|resp| {
            if resp.status() == 200 && done > 0 {
                // The server ignored the range: start again from the first byte.
                out.set_len(0).map_err(|e| e.to_string())?;
                done = 0;
            }
            let mut body = resp.into_reader();
            loop {
                let n = body.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok(());
                }
                let n = n.min((remote.size - done) as usize);
                out.write_all(&buf[..n]).map_err(|e| format!("writing {}: {e}", part.display()))?;
                done += n as u64;
                progress.advance(n as u64);
                if done >= remote.size {
                    return Ok(());
                }
            }
        });
        if let Err(e) = result {
            failures += 1;
            if failures > 3 {
                return Err(format!(
                    "download interrupted at {done} of {} bytes ({e}); run again to resume",
                    remote.size
                ));
            }
            tracing::warn!("{file}: {e}; resuming at byte {done} (attempt {})", failures + 1);
            std::thread::sleep(std::time::Duration::from_millis(500 << failures));
        } else if done < remote.size {
            failures += 1;
            if failures > 3 {
                return Err(format!("the hub sent {done} of {} bytes; run again to resume", remote.size));
            }
        }
    }
    out.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&part, blob).map_err(|e| format!("renaming {}: {e}", part.display()))?;
    progress.finish();
    Ok(())
}
