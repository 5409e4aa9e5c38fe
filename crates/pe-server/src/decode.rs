//! Image and video decoding under a memory budget. Each decode first reads the header, works
//! out the bytes it will hold at its peak, and waits for that much of the budget; an input
//! that needs more than the whole budget is refused (413) without being decoded. So the
//! decodes running at once never hold more than the budget, however many requests arrive.
//! After a large decode the freed memory is handed back to the kernel once nothing else is
//! decoding, so the process does not stay at its peak.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use perception_encoder::candle_core::Tensor;
use perception_encoder::preprocess::{self, ImageTransform};
use perception_encoder::video::{self, FrameSampling};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::requests::{image_bytes, ImageSource};
use crate::ServeError;

const MIB: u64 = 1 << 20;
/// Decodes at least this large give their memory back to the kernel when done.
const TRIM_AFTER_BYTES: u64 = 64 * MIB;

/// Memory set aside for decoding, in MiB permits.
#[derive(Debug)]
pub(crate) struct DecodeBudget {
    permits: Arc<Semaphore>,
    total_mib: u32,
    /// Bytes reserved by decodes running now, and the most ever reserved at once.
    pub(crate) in_use: AtomicU64,
    pub(crate) peak: AtomicU64,
}

/// A reservation of the budget, returned when dropped. It moves into the blocking task that
/// decodes, so a request that times out does not release memory its decode still holds.
pub(crate) struct Reservation {
    budget: Arc<DecodeBudget>,
    bytes: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.in_use.fetch_sub(self.bytes, Ordering::SeqCst);
        // After a large decode, once no other decode holds memory, return freed heap.
        if self.bytes >= TRIM_AFTER_BYTES && self.budget.in_use.load(Ordering::SeqCst) == 0 {
            perception_encoder::runtime::release_freed_memory();
        }
    }
}

impl DecodeBudget {
    pub(crate) fn new(bytes: u64) -> Self {
        let total_mib = (bytes / MIB).clamp(1, u64::from(u32::MAX >> 3)) as u32;
        DecodeBudget {
            permits: Arc::new(Semaphore::new(total_mib as usize)),
            total_mib,
            in_use: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }
    }

    /// The budget in bytes.
    pub(crate) fn total_bytes(&self) -> u64 {
        u64::from(self.total_mib) * MIB
    }

    /// Wait until `bytes` of the budget are free and reserve them; `what` names the input in
    /// the error when it could never fit.
    pub(crate) async fn reserve(self: &Arc<Self>, bytes: u64, what: &str) -> Result<Reservation, ServeError> {
        let mib = bytes.div_ceil(MIB).max(1);
        if mib > u64::from(self.total_mib) {
            return Err(ServeError::TooLarge(format!(
                "{what} needs {mib} MiB to decode, more than the decode budget of {} MiB (`--decode-budget-mb`)",
                self.total_mib
            )));
        }
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(mib as u32)
            .await
            .map_err(|_| ServeError::Unavailable("the decode budget is closed".into()))?;
        let now = self.in_use.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Ok(Reservation { budget: self.clone(), bytes, _permit: permit })
    }
}

fn label(i: usize, e: ServeError) -> ServeError {
    match e {
        ServeError::Invalid(m) => ServeError::Invalid(format!("image {i}: {m}")),
        ServeError::TooLarge(m) => ServeError::TooLarge(format!("image {i}: {m}")),
        other => other,
    }
}

/// One image: bytes, header, reservation, then decode and transform on the blocking pool.
async fn decode_one(
    budget: Arc<DecodeBudget>,
    transform: ImageTransform,
    i: usize,
    src: ImageSource,
) -> Result<Tensor, ServeError> {
    let bytes = image_bytes(i, src)?;
    let info = preprocess::probe(&bytes, transform.max_pixels).map_err(|e| label(i, e.into()))?;
    let what = format!("image {i} ({}x{})", info.width, info.height);
    let held = budget.reserve(info.decode_bytes, &what).await?;
    tokio::task::spawn_blocking(move || {
        let out = transform.load_bytes(&bytes).map_err(|e| label(i, e.into()));
        drop(held);
        out
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))?
}

/// Decode images and apply the transform, in parallel on the blocking pool within the budget.
/// The first failure (in input order) is the answer; dropping the future cancels what waits.
pub(crate) async fn decode_images(
    budget: &Arc<DecodeBudget>,
    transform: ImageTransform,
    images: Vec<ImageSource>,
) -> Result<Vec<Tensor>, ServeError> {
    let mut set = tokio::task::JoinSet::new();
    let n = images.len();
    for (i, src) in images.into_iter().enumerate() {
        let budget = budget.clone();
        set.spawn(async move { (i, decode_one(budget, transform, i, src).await) });
    }
    let mut out: Vec<Option<Result<Tensor, ServeError>>> = (0..n).map(|_| None).collect();
    while let Some(done) = set.join_next().await {
        let (i, r) = done.map_err(|e| ServeError::Internal(e.to_string()))?;
        out[i] = Some(r);
    }
    out.into_iter().map(|r| r.unwrap_or_else(|| Err(ServeError::Internal("a decode task vanished".into())))).collect()
}

/// A video upload: probe it, reserve two full-size frames (FFmpeg's buffer and the one being
/// transformed), then decode and transform its sampled frames one at a time.
pub(crate) async fn decode_video(
    budget: &Arc<DecodeBudget>,
    transform: ImageTransform,
    path: &Path,
    what: &str,
    frames: usize,
    rule: FrameSampling,
) -> Result<Tensor, ServeError> {
    let p = path.to_path_buf();
    let info = tokio::task::spawn_blocking(move || video::probe(&p))
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))?
        .map_err(|e| video_error(e, path, what))?;
    let frame = info.width as u64 * info.height as u64 * 3;
    let cost =
        frame.saturating_mul(2).saturating_add((frames as u64).saturating_mul(transform.size.pow(2) as u64 * 12));
    let held = budget.reserve(cost, &format!("{what} ({}x{})", info.width, info.height)).await?;
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let out = video::load_clip_probed(&p, &info, frames, rule, &transform);
        drop(held);
        out
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))?
    .map_err(|e| video_error(e, path, what))
}

/// A video error, naming the upload instead of its temporary file.
fn video_error(e: perception_encoder::Error, tmp: &Path, what: &str) -> ServeError {
    let hide = |m: String| m.replace(&tmp.display().to_string(), what);
    match e {
        perception_encoder::Error::Video(m) | perception_encoder::Error::InvalidInput(m) => {
            let m = hide(m);
            ServeError::Invalid(if m.contains(what) { m } else { format!("{what}: {m}") })
        }
        perception_encoder::Error::ImageTooLarge { .. } => ServeError::TooLarge(format!("{what}: {e}")),
        other => match ServeError::from(other) {
            ServeError::Invalid(m) => ServeError::Invalid(hide(m)),
            ServeError::Internal(m) => ServeError::Internal(hide(m)),
            o => o,
        },
    }
}
