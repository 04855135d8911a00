//! The one way to run the actors: a [`PipelineConfig`] in, a
//! [`RunningPipeline`] out.
//!
//! ```text
//!  start(cfg)        the store; the Source, the Sink and one BackendActor per
//!                    device, each on an arbiter (a thread) of its own; the
//!                    Scheduler on the caller's arbiter
//!  .finish().await   the Sink's summary once every batch is committed (or the
//!                    first error, or a cancel), then every thread stopped and
//!                    joined, and what the store saw
//! ```
//!
//! Both run inside the caller's `actix::System`. What comes before (checking
//! the input, choosing devices, preparing or resuming the output directory:
//! [`crate::checkpoint::protocol`]) and after (merging) is the caller's.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::backend::{BackendActor, SharedModel};
use crate::devices::Device;
use crate::error::PipelineError;
use crate::input::{Input, RowLimits};
use crate::messages::SinkSummary;
use crate::model::Backend;
use crate::progress::Progress;
use crate::results::OutputColumns;
use crate::scheduler::{Pipeline, Scheduler, SchedulerConfig};
use crate::sink::{Sink, SinkConfig};
use crate::source::{RowFeed, Source, SourceConfig};
use crate::store::{ObjectStore, StoreStats};

/// Where the rows come from.
pub enum Feed {
    /// An input opened (and, with `on_error = "fail"`, checked) by the caller.
    Input(Input),
    /// Rows from memory, each one row's JSON text, pulled only as batches are
    /// admitted; `name` names them in errors.
    Rows {
        /// The name rows are reported under.
        name: String,
        /// The rows.
        rows: RowFeed,
    },
}

/// Everything a pipeline needs; [`start`] takes it whole.
pub struct PipelineConfig {
    /// The rows.
    pub feed: Feed,
    /// The model every BackendActor loads.
    pub backend: Arc<dyn Backend>,
    /// One BackendActor per entry, on that device.
    pub devices: Vec<Device>,
    /// `Some`: the actors share one loaded model (tasks on one device);
    /// `None`: each actor loads its own.
    pub shared_model: Option<Arc<SharedModel>>,
    /// The request and output columns (the backend's and the passthrough).
    pub columns: OutputColumns,
    /// The object store's budget in bytes.
    pub store_bytes: usize,
    /// Whether the store keeps per-holder figures (`memory.holder_accounting`).
    pub holder_accounting: bool,
    /// Rows per batch.
    pub batch_size: usize,
    /// Row limits.
    pub limits: RowLimits,
    /// Rows that are bad, or fail alone in the model, go to the errors file
    /// (true) or stop the run (false).
    pub skip_bad_rows: bool,
    /// Retries of a failed batch before the run fails.
    pub max_retries: u32,
    /// How far ahead of the oldest unfinished batch to admit; `None` admits
    /// without that bound (order off).
    pub reorder_window: Option<usize>,
    /// A batch in flight longer than this is sent again to an idle actor,
    /// and a stop waits no longer than this for threads in a model call.
    pub timeout: Option<Duration>,
    /// The input, as named in errors.
    pub input_name: Arc<str>,
    /// The input's content key (deterministic ids are derived from it).
    pub input_key: Arc<str>,
    /// Where results go: part files in a prepared directory, or a stream.
    /// Its `todo` also tells the Source which batches to encode.
    pub sink: SinkConfig,
    /// Counters and events.
    pub progress: Arc<Progress>,
    /// Set to stop cleanly (committed shards kept, the run resumable).
    pub cancel: Arc<AtomicBool>,
}

/// A started pipeline; [`RunningPipeline::finish`] waits for it.
pub struct RunningPipeline {
    outcome: oneshot::Receiver<Result<SinkSummary, PipelineError>>,
    arbiters: Vec<Arbiter>,
    store: ObjectStore,
    timeout: Option<Duration>,
}

/// Starts the store and the actors. Must be called inside a running
/// `actix::System`.
pub fn start(cfg: PipelineConfig) -> Result<RunningPipeline, PipelineError> {
    let store = ObjectStore::with_options(
        cfg.store_bytes,
        Some(cfg.progress.clone()),
        cfg.holder_accounting,
    )?;
    let mut arbiters = Vec::new();
    let source = {
        let source_cfg = SourceConfig {
            schema: cfg.columns.request.clone(),
            batch_size: cfg.batch_size,
            limits: cfg.limits,
            skip_bad_rows: cfg.skip_bad_rows,
            todo: cfg.sink.todo.clone(),
        };
        let feed = cfg.feed;
        Source::start_in_arbiter(&on_arbiter(&mut arbiters), move |_| match feed {
            Feed::Input(input) => Source::new(input, source_cfg),
            Feed::Rows { name, rows } => Source::from_rows(&name, rows, source_cfg),
        })
    };
    let sink = {
        let (sink_cfg, progress) = (cfg.sink, cfg.progress.clone());
        Sink::start_in_arbiter(&on_arbiter(&mut arbiters), move |_| {
            Sink::new(sink_cfg, progress)
        })
    };
    let workers: Vec<_> = cfg
        .devices
        .iter()
        .map(|device| {
            let (backend, device, progress) =
                (cfg.backend.clone(), device.clone(), cfg.progress.clone());
            let (shared, key, columns) = (
                cfg.shared_model.clone(),
                cfg.input_key.clone(),
                cfg.columns.clone(),
            );
            BackendActor::start_in_arbiter(&on_arbiter(&mut arbiters), move |_| {
                match shared {
                    None => BackendActor::owning(backend, device, progress),
                    Some(shared) => BackendActor::sharing(backend, device, shared, progress),
                }
                .with_input_key(key)
                .with_columns(columns)
            })
        })
        .collect();
    let (tx, rx) = oneshot::channel();
    let sched_cfg = SchedulerConfig {
        max_retries: cfg.max_retries,
        reorder_window: cfg.reorder_window,
        lookahead: workers.len(),
        skip_bad_rows: cfg.skip_bad_rows,
        input_name: cfg.input_name,
        timeout: cfg.timeout,
        columns: cfg.columns,
    };
    let (backend, cancel, progress, store2) =
        (cfg.backend, cfg.cancel, cfg.progress, store.clone());
    Scheduler::create(move |_| {
        Scheduler::new(
            sched_cfg,
            store2,
            backend,
            Pipeline {
                source,
                workers,
                sink,
            },
            cancel,
            progress,
            tx,
        )
    });
    Ok(RunningPipeline {
        outcome: rx,
        arbiters,
        store,
        timeout: cfg.timeout,
    })
}

impl RunningPipeline {
    /// Waits for the outcome, then stops and joins every thread, without
    /// blocking the caller's thread. An actor still inside a model call
    /// (one abandoned past `timeout`) cannot be interrupted: after the
    /// timeout its thread is left to finish on its own, and said so.
    pub async fn finish(self) -> (Result<SinkSummary, PipelineError>, StoreStats) {
        let outcome = self
            .outcome
            .await
            .unwrap_or(Err(PipelineError::ActorGone("scheduler")));
        join_arbiters(self.arbiters, self.timeout).await;
        let stats = self.store.stats();
        (outcome, stats)
    }
}

/// A new arbiter (a thread) for one actor, kept in `arbiters` to be joined.
fn on_arbiter(arbiters: &mut Vec<Arbiter>) -> ArbiterHandle {
    let arb = Arbiter::new();
    let handle = arb.handle();
    arbiters.push(arb);
    handle
}

async fn join_arbiters(arbiters: Vec<Arbiter>, timeout: Option<Duration>) {
    for arb in &arbiters {
        arb.stop();
    }
    let n = arbiters.len();
    let (tx, rx) = oneshot::channel();
    let joiner = std::thread::spawn(move || {
        for arb in arbiters {
            let _ = arb.join();
        }
        let _ = tx.send(());
    });
    let joined = match timeout {
        None => rx.await.is_ok(),
        Some(t) => matches!(actix_rt::time::timeout(t, rx).await, Ok(Ok(()))),
    };
    if joined {
        let _ = joiner.join();
    } else {
        tracing::warn!(
            threads = n,
            "actor threads still busy in a model call; left to finish"
        );
    }
}
