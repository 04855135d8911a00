//! A job started inside a host's running `actix::System`: progress events,
//! cancel, and a future of the report.
//!
//! ```text
//!  let mut handle = job.start(RunControl::default());   // returns at once
//!  handle.events()   → Receiver<ProgressEvent>          // ticks and committed shards
//!  handle.progress() → ProgressSnapshot                 // exact counters, any time
//!  handle.cancel()                                      // as Ctrl-C: clean, resumable
//!  handle.wait().await → Result<RunReport, RunError>
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stook_actors::sink::{ResultBatch, ResultSender};
use stook_actors::source::RowFeed;
use stook_actors::{PipelineError, Progress, ProgressEvent, ProgressSnapshot};
use tokio::sync::mpsc;

use crate::report::RunReport;
use crate::runner::{Job, RunControl, RunError};

/// Events kept for a reader that falls behind; more are dropped (the
/// counters of [`JobHandle::progress`] stay exact).
pub const EVENTS_KEPT: usize = 1024;
/// How often a progress event is sent.
pub const TICK: Duration = Duration::from_millis(500);

/// A running job.
pub struct JobHandle {
    cancel: Arc<AtomicBool>,
    progress: Arc<Progress>,
    events: Option<mpsc::Receiver<ProgressEvent>>,
    outcome: tokio::task::JoinHandle<Result<RunReport, RunError>>,
}

impl Job {
    /// Starts the job in the current `actix::System` (it must be running)
    /// and returns at once. Its actors get threads of their own; nothing of
    /// it blocks the caller's thread.
    pub fn start(self, control: RunControl) -> JobHandle {
        let c = control.clone();
        launch(control, async move { self.run(c).await })
    }

    /// Starts the job over `rows` from memory (each serialises to one JSON
    /// object) and returns at once, with the stream of its results in input
    /// order (see [`Job::run_rows`]): a consumer that reads slowly stops
    /// the rows being pulled. Dropping the stream stops the job.
    pub fn start_rows<T, I>(self, rows: I, control: RunControl) -> (JobHandle, ResultStream)
    where
        T: serde::Serialize,
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        let feed: RowFeed = Box::new(rows.into_iter().map(|row| {
            // A row that does not serialise becomes a bad row, named.
            serde_json::to_vec(&row)
                .unwrap_or_else(|e| format!("\"row does not serialise: {e}\"").into_bytes())
        }));
        let (tx, rx) = mpsc::channel(RESULT_BATCHES_KEPT);
        let sender = ResultSender {
            tx,
            cancel: control.cancel.clone(),
        };
        let c = control.clone();
        let handle = launch(control, async move { self.run_rows(feed, sender, c).await });
        (handle, rx)
    }
}

/// Results of a job over rows from memory, batch by batch, in input order.
pub type ResultStream = mpsc::Receiver<ResultBatch>;

/// Result batches a stream holds before the job waits for its reader.
pub const RESULT_BATCHES_KEPT: usize = 2;

/// Spawns `run` and the progress ticker in the current System.
fn launch(
    control: RunControl,
    run: impl std::future::Future<Output = Result<RunReport, RunError>> + 'static,
) -> JobHandle {
    let (tx, rx) = mpsc::channel(EVENTS_KEPT);
    // Cleared when the job ends, so that the stream ends too.
    let shard_tx = Arc::new(Mutex::new(Some(tx.clone())));
    let observer_tx = shard_tx.clone();
    control.progress.observe(move |e| {
        if let Some(tx) = &*observer_tx.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.try_send(e);
        }
    });
    let (cancel, progress) = (control.cancel.clone(), control.progress.clone());
    let finished = Arc::new(AtomicBool::new(false));
    let (p, done) = (progress.clone(), finished.clone());
    actix_rt::spawn(async move {
        let started = Instant::now();
        let mut every = actix_rt::time::interval(TICK);
        loop {
            every.tick().await;
            let last = done.load(Ordering::SeqCst);
            let snapshot = p.snapshot();
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            let _ = tx.try_send(ProgressEvent::Progress {
                snapshot,
                rows_per_second: snapshot.rows_done as f64 / secs,
            });
            if last {
                break;
            }
        }
    });
    let outcome = actix_rt::spawn(async move {
        let r = run.await;
        shard_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        finished.store(true, Ordering::SeqCst);
        r
    });
    JobHandle {
        cancel,
        progress,
        events: Some(rx),
        outcome,
    }
}

impl JobHandle {
    /// Stops the job as Ctrl-C does: no new batches, those in flight
    /// finish, complete shards are committed; the output resumes later.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// The counters now.
    pub fn progress(&self) -> ProgressSnapshot {
        self.progress.snapshot()
    }

    /// The job's events: a progress tick every [`TICK`] (and a last one
    /// at the end) and each committed shard. The stream ends after the
    /// job does. `None` once taken.
    pub fn events(&mut self) -> Option<mpsc::Receiver<ProgressEvent>> {
        self.events.take()
    }

    /// Whether the job has ended.
    pub fn is_finished(&self) -> bool {
        self.outcome.is_finished()
    }

    /// The job's report, or why it did not complete.
    pub async fn wait(self) -> Result<RunReport, RunError> {
        self.outcome
            .await
            .unwrap_or(Err(RunError::Pipeline(PipelineError::ActorGone("job"))))
    }
}
