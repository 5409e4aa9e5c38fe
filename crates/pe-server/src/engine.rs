//! The model runs on its own OS thread behind a bounded queue. Requests that arrive together
//! are run together: the thread takes the first job, then keeps collecting compatible jobs
//! (same kind, same layer) until the batch is full or `max_wait` has passed. Jobs that cannot
//! join wait for the next batch; jobs whose caller has gone are dropped unrun.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use perception_encoder::candle_core::{DType, Tensor};
use perception_encoder::Clip;
use tokio::sync::oneshot;

use crate::error::ServeError;
pub use crate::metrics::Stats;

/// What one request asks the model for.
#[derive(Debug)]
pub(crate) enum Work {
    /// Preprocessed images `(3, S, S)` each, embedded from blocks up to `layer`.
    Images { pixels: Vec<Tensor>, layer: isize },
    /// Token id rows of `context_length` each (tokenized off the model thread).
    Texts { ids: Vec<Vec<u32>> },
    /// Preprocessed images whose token features after block `layer` are wanted (through
    /// `ln_post` with `norm`), each as one row of tokens x width.
    Features { pixels: Vec<Tensor>, layer: isize, norm: bool },
}

impl Work {
    fn len(&self) -> usize {
        match self {
            Work::Images { pixels, .. } | Work::Features { pixels, .. } => pixels.len(),
            Work::Texts { ids } => ids.len(),
        }
    }
    /// Jobs with equal keys can share a forward pass: (kind, layer, norm).
    fn key(&self) -> (u8, isize, bool) {
        match self {
            Work::Images { layer, .. } => (0, *layer, false),
            Work::Texts { .. } => (1, 0, false),
            Work::Features { layer, norm, .. } => (2, *layer, *norm),
        }
    }
    fn is_text(&self) -> bool {
        matches!(self, Work::Texts { .. })
    }
}

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, ServeError>>;

struct Job {
    work: Work,
    reply: Reply,
}

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Images per forward pass.
    pub max_batch: usize,
    /// Texts per forward pass.
    pub max_text_batch: usize,
    /// How long the first job of a batch waits for company.
    pub max_wait: Duration,
    /// Jobs waiting at most; more are refused (the HTTP layer answers 503).
    pub queue_capacity: usize,
}

/// Handle to the model thread.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Job>,
    ready: Arc<AtomicBool>,
    /// Shared counters.
    pub stats: Arc<Stats>,
}

impl Engine {
    /// Start the model thread.
    pub fn start(model: Clip, cfg: BatchConfig) -> Engine {
        let (tx, rx) = sync_channel(cfg.queue_capacity.max(1));
        // The model is loaded before the engine starts; the flag drops if its thread ends.
        let ready = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(Stats::default());
        let (r, s) = (ready.clone(), stats.clone());
        std::thread::Builder::new()
            .name("pe-model".into())
            .spawn(move || {
                run(model, cfg, rx, &s);
                r.store(false, Ordering::SeqCst);
            })
            .expect("spawning the model thread");
        Engine { tx, ready, stats }
    }

    /// Whether the model thread is up.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Queue `work` and wait for its embeddings (raw, not normalized).
    pub(crate) async fn submit(&self, work: Work) -> Result<Vec<Vec<f32>>, ServeError> {
        let (reply, rx) = oneshot::channel();
        self.stats.queue_depth.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(Job { work, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.queue_depth.fetch_sub(1, Ordering::SeqCst);
                return Err(ServeError::Overloaded);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.queue_depth.fetch_sub(1, Ordering::SeqCst);
                return Err(ServeError::Unavailable("the model thread has stopped".into()));
            }
        }
        rx.await.map_err(|_| ServeError::Unavailable("the model thread dropped the request".into()))?
    }
}

fn run(model: Clip, cfg: BatchConfig, rx: Receiver<Job>, stats: &Stats) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        let first = match pending.pop_front() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => {
                    stats.queue_depth.fetch_sub(1, Ordering::SeqCst);
                    j
                }
                Err(_) => return,
            },
        };
        let key = first.work.key();
        let limit = if first.work.is_text() { cfg.max_text_batch } else { cfg.max_batch }.max(1);
        let mut items = first.work.len();
        let mut batch = vec![first];
        // Jobs set aside earlier come first, then new arrivals until full or out of time.
        let mut i = 0;
        while i < pending.len() && items < limit {
            if pending[i].work.key() == key && items + pending[i].work.len() <= limit {
                let j = pending.remove(i).expect("index in range");
                items += j.work.len();
                batch.push(j);
            } else {
                i += 1;
            }
        }
        let deadline = Instant::now() + cfg.max_wait;
        while items < limit {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(j) => {
                    stats.queue_depth.fetch_sub(1, Ordering::SeqCst);
                    if j.work.key() == key && items + j.work.len() <= limit {
                        items += j.work.len();
                        batch.push(j);
                    } else {
                        pending.push_back(j);
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        batch.retain(|j| !j.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        execute(&model, batch, limit, stats);
    }
}

/// Run the jobs' items through the model in chunks of at most `limit` and answer each job.
fn execute(model: &Clip, batch: Vec<Job>, limit: usize, stats: &Stats) {
    let sizes: Vec<usize> = batch.iter().map(|j| j.work.len()).collect();
    let total: usize = sizes.iter().sum();
    let result = forward(model, &batch, limit);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.batch_size.observe(total as f64);
    let counter = if batch[0].work.is_text() { &stats.texts } else { &stats.images };
    counter.fetch_add(total, Ordering::Relaxed);
    match result {
        Ok(rows) => {
            let mut rows = rows.into_iter();
            for (job, n) in batch.into_iter().zip(sizes) {
                let _ = job.reply.send(Ok(rows.by_ref().take(n).collect()));
            }
        }
        Err(e) => {
            for job in batch {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

fn forward(model: &Clip, batch: &[Job], limit: usize) -> Result<Vec<Vec<f32>>, ServeError> {
    // Bad input is caught before queueing; what is left maps to 4xx or 500 by its kind.
    let internal: fn(perception_encoder::Error) -> ServeError = ServeError::from;
    let abandoned = || batch.iter().all(|j| j.reply.is_closed());
    let gone = || ServeError::Unavailable("every caller of this batch has gone".into());
    let mut rows = Vec::new();
    match &batch[0].work {
        Work::Images { .. } | Work::Features { .. } => {
            let all: Vec<&Tensor> = batch
                .iter()
                .flat_map(|j| match &j.work {
                    Work::Images { pixels, .. } | Work::Features { pixels, .. } => pixels.iter().collect::<Vec<_>>(),
                    Work::Texts { .. } => Vec::new(),
                })
                .collect();
            for chunk in all.chunks(limit) {
                if abandoned() {
                    return Err(gone());
                }
                let x = Tensor::stack(chunk, 0).map_err(|e| internal(e.into()))?;
                let y = match &batch[0].work {
                    Work::Features { layer, norm, .. } => model.forward_features(&x, *layer, *norm, false),
                    Work::Images { layer, .. } => model.encode_image_at(&x, *layer, false),
                    Work::Texts { .. } => unreachable!("texts are batched apart"),
                }
                .map_err(internal)?;
                // One row per image: an embedding, or tokens x width flattened.
                let y = y.to_dtype(DType::F32).and_then(|t| t.flatten_from(1)).and_then(|t| t.to_vec2::<f32>());
                rows.extend(y.map_err(|e| internal(e.into()))?);
            }
        }
        Work::Texts { .. } => {
            if model.text().is_none() {
                return Err(ServeError::Invalid("this model has no text tower".into()));
            }
            let all: Vec<&Vec<u32>> = batch
                .iter()
                .flat_map(|j| match &j.work {
                    Work::Texts { ids } => ids.iter().collect::<Vec<_>>(),
                    Work::Images { .. } | Work::Features { .. } => Vec::new(),
                })
                .collect();
            for chunk in all.chunks(limit) {
                if abandoned() {
                    return Err(gone());
                }
                let width = chunk[0].len();
                let flat: Vec<u32> = chunk.iter().flat_map(|r| r.iter().copied()).collect();
                let ids =
                    Tensor::from_vec(flat, (chunk.len(), width), model.device()).map_err(|e| internal(e.into()))?;
                let y = model.encode_text(&ids, false).map_err(internal)?;
                rows.extend(y.to_dtype(DType::F32).and_then(|t| t.to_vec2::<f32>()).map_err(|e| internal(e.into()))?);
            }
        }
    }
    Ok(rows)
}
