//! The Scheduler: admission, dispatch and retries.
//!
//! ```text
//!  plan ──▶ reserve input + output room (or wait) ──▶ Source encodes ──▶ ready
//!  ready ──▶ an idle BackendActor ──▶ output ──▶ Sink (reorders, writes)
//!                    └─ error ──▶ ready again (up to max_retries), else the run fails
//! ```
//!
//! A batch is admitted only when the store can reserve both its input and
//! its output: inputs can never fill the store and starve outputs. Batches go
//! only to idle actors, one each, so no mailbox holds more than one batch.
//! With order preserved, no batch is admitted more than `reorder_window`
//! batches ahead of the oldest unfinished one, which bounds what the Sink
//! must hold while one batch lags.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::fut::wrap_future;
use actix::prelude::*;
use tokio::sync::oneshot;

use crate::backend::BackendActor;
use crate::batch::input_bound;
use crate::error::PipelineError;
use crate::messages::{
    BatchPlan, Compute, Computed, Deliver, Finish, InputBatch, LoadModel, PlanBatch, ProduceBatch,
    SinkSummary,
};
use crate::model::Backend;
use crate::progress::Progress;
use crate::results::{output_bound, OutputColumns};
use crate::rows::RowError;
use crate::sink::Sink;
use crate::source::Source;
use crate::store::{Holder, ObjectRef, ObjectStore, Reservation};

/// How the Scheduler admits and retries.
#[derive(Clone, Debug)]
pub(crate) struct SchedulerConfig {
    /// Retries of a failed batch before the run fails.
    pub max_retries: u32,
    /// How far ahead of the oldest unfinished batch to admit; `None` admits
    /// without that bound (order off).
    pub reorder_window: Option<usize>,
    /// Encoded batches kept ready for idle actors.
    pub lookahead: usize,
    /// Rows that fail alone in the model go to the errors file (true) or
    /// fail the run (false).
    pub skip_bad_rows: bool,
    /// The input, as named in errors.
    pub input_name: Arc<str>,
    /// A batch in flight longer than this is sent again to an idle actor,
    /// and a stop waits no longer than this for batches in flight.
    pub timeout: Option<Duration>,
    /// The output objects' columns (the backend's and those `[output]
    /// passthrough` copies from the input): their room is reserved from
    /// them.
    pub columns: OutputColumns,
}

#[derive(Clone)]
struct Work {
    plan: BatchPlan,
    input: ObjectRef,
    errors: Vec<RowError>,
    attempts: u32,
    dispatched: Option<Instant>,
    speculated: bool,
}

/// The actors a Scheduler drives.
pub(crate) struct Pipeline {
    /// The Source.
    pub source: Addr<Source>,
    /// The backend pool.
    pub workers: Vec<Addr<BackendActor>>,
    /// The Sink.
    pub sink: Addr<Sink>,
}

/// The Scheduler actor. Its result arrives on the channel given to `new`.
pub struct Scheduler {
    cfg: SchedulerConfig,
    store: ObjectStore,
    backend: Arc<dyn Backend>,
    columns: OutputColumns,
    actors: Pipeline,
    idle: Vec<usize>,
    idle_since: Vec<Option<Instant>>,
    progress: Arc<Progress>,
    loaded: bool,
    next_plan: Option<BatchPlan>,
    exhausted: bool,
    source_busy: bool,
    ready: VecDeque<(Work, Reservation)>,
    in_flight: Vec<Option<Work>>,
    copies: HashMap<u64, usize>,
    settled: HashSet<u64>,
    stopping_since: Option<Instant>,
    delivering: usize,
    unfinished: BTreeSet<u64>,
    failure: Option<PipelineError>,
    cancel: Arc<AtomicBool>,
    finishing: bool,
    done: Option<oneshot::Sender<Result<SinkSummary, PipelineError>>>,
}

impl Scheduler {
    /// A Scheduler over `actors`; the run's outcome is sent on `done`.
    pub(crate) fn new(
        cfg: SchedulerConfig,
        store: ObjectStore,
        backend: Arc<dyn Backend>,
        actors: Pipeline,
        cancel: Arc<AtomicBool>,
        progress: Arc<Progress>,
        done: oneshot::Sender<Result<SinkSummary, PipelineError>>,
    ) -> Self {
        let n = actors.workers.len();
        let columns = cfg.columns.clone();
        Scheduler {
            idle_since: vec![None; n],
            progress,
            cfg,
            store,
            columns,
            backend,
            idle: (0..n).rev().collect(),
            in_flight: (0..n).map(|_| None).collect(),
            copies: HashMap::new(),
            settled: HashSet::new(),
            stopping_since: None,
            actors,
            loaded: false,
            next_plan: None,
            exhausted: false,
            source_busy: false,
            ready: VecDeque::new(),
            delivering: 0,
            unfinished: BTreeSet::new(),
            failure: None,
            cancel,
            finishing: false,
            done: Some(done),
        }
    }

    fn is_stopping(&self) -> bool {
        self.failure.is_some() || self.cancel.load(Ordering::Relaxed)
    }

    fn fail(&mut self, e: PipelineError) {
        if self.failure.is_none() {
            tracing::debug!(error = %e, "run failing");
            self.failure = Some(e);
        }
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        if !self.loaded || self.finishing {
            return;
        }
        if self.is_stopping() {
            self.stopping_since.get_or_insert_with(Instant::now);
            self.ready.clear();
            self.next_plan = None;
        } else {
            self.admit(ctx);
            self.dispatch(ctx);
            self.speculate(ctx);
        }
        self.maybe_finish(ctx);
    }

    fn admit(&mut self, ctx: &mut Context<Self>) {
        if self.source_busy || self.exhausted || self.ready.len() >= self.cfg.lookahead {
            return;
        }
        let Some(plan) = self.next_plan.clone() else {
            self.source_busy = true;
            let fut = self.actors.source.send(PlanBatch);
            ctx.spawn(wrap_future(fut).map(|res, act: &mut Self, ctx| {
                act.source_busy = false;
                match res {
                    Ok(Ok(Some(plan))) => act.next_plan = Some(plan),
                    Ok(Ok(None)) => act.exhausted = true,
                    Ok(Err(e)) => act.fail(e),
                    Err(_) => act.fail(PipelineError::ActorGone("source")),
                }
                act.pump(ctx);
            }));
            return;
        };
        if let (Some(w), Some(&oldest)) = (self.cfg.reorder_window, self.unfinished.first()) {
            if plan.index >= oldest + w as u64 {
                return;
            }
        }
        let input = input_bound(&self.columns.request, plan.rows, plan.bytes);
        let output = output_room(self.backend.as_ref(), &self.columns, &plan);
        let budget = self.store.budget();
        if input + output > budget {
            return self.fail(PipelineError::BatchTooLarge {
                batch: plan.index,
                first_line: plan.lines.0,
                last_line: plan.lines.1,
                needed: input + output,
                budget,
            });
        }
        let reserved = match (
            self.store.try_reserve(input),
            self.store.try_reserve(output),
        ) {
            (Ok(Some(i)), Ok(Some(o))) => (i, o),
            (Err(e), _) | (_, Err(e)) => return self.fail(e.into()),
            _ => return, // not now: retried when something is released
        };
        self.next_plan = None;
        self.source_busy = true;
        self.unfinished.insert(plan.index);
        let (in_res, out_res) = reserved;
        let fut = self.actors.source.send(ProduceBatch {
            plan,
            reservation: in_res,
        });
        ctx.spawn(wrap_future(fut).map(move |res, act: &mut Self, ctx| {
            act.source_busy = false;
            match res {
                Ok(Ok(batch)) => act.produced(batch, out_res, ctx),
                Ok(Err(e)) => act.fail(e),
                Err(_) => act.fail(PipelineError::ActorGone("source")),
            }
            act.pump(ctx);
        }));
    }

    fn produced(&mut self, batch: InputBatch, reservation: Reservation, ctx: &mut Context<Self>) {
        let InputBatch {
            plan,
            object,
            errors,
            ..
        } = batch;
        match object {
            Some(input) => self.ready.push_back((
                Work {
                    plan,
                    input,
                    errors,
                    attempts: 0,
                    dispatched: None,
                    speculated: false,
                },
                reservation,
            )),
            // Every row was bad: nothing to compute, but the Sink must
            // still see the batch to keep order and count.
            None => self.deliver(plan, None, errors, Default::default(), ctx),
        }
    }

    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        while !self.ready.is_empty() {
            let Some(slot) = self.idle.pop() else { return };
            let Some((mut work, reservation)) = self.ready.pop_front() else {
                self.idle.push(slot);
                return;
            };
            if let Some(since) = self.idle_since[slot].take() {
                self.progress.record_wait(since.elapsed());
            }
            work.attempts += 1;
            self.send_to(slot, work, reservation, ctx);
        }
    }

    /// Sends `work` to the actor in `slot`.
    fn send_to(
        &mut self,
        slot: usize,
        mut work: Work,
        reservation: Reservation,
        ctx: &mut Context<Self>,
    ) {
        {
            work.input.set_holder(Holder::InFlight);
            work.dispatched = Some(Instant::now());
            *self.copies.entry(work.plan.index).or_insert(0) += 1;
            let msg = Compute {
                index: work.plan.index,
                input: work.input.clone(),
                reservation,
                // After its retries, a batch is bisected to find the rows
                // that fail alone.
                isolate: work.attempts > self.cfg.max_retries.saturating_add(1),
            };
            self.in_flight[slot] = Some(work);
            let fut = self.actors.workers[slot].send(msg);
            ctx.spawn(wrap_future(fut).map(move |res, act: &mut Self, ctx| {
                act.idle.push(slot);
                act.idle_since[slot] = Some(Instant::now());
                let work = act.in_flight[slot].take();
                match (res, work) {
                    (Ok(done), Some(work)) => act.settle(done, work, ctx),
                    _ => act.fail(PipelineError::ActorGone("backend")),
                }
                act.pump(ctx);
            }));
        }
    }

    /// A batch in flight past the timeout goes again to an idle actor, with
    /// room for a second output; the first result to arrive wins.
    fn speculate(&mut self, ctx: &mut Context<Self>) {
        let Some(timeout) = self.cfg.timeout else {
            return;
        };
        if !self.ready.is_empty() {
            return;
        }
        let late: Vec<usize> = (0..self.in_flight.len())
            .filter(|&s| {
                self.in_flight[s].as_ref().is_some_and(|w| {
                    !w.speculated
                        && !self.settled.contains(&w.plan.index)
                        && w.dispatched.is_some_and(|d| d.elapsed() > timeout)
                })
            })
            .collect();
        for s in late {
            let Some(slot) = self.idle.pop() else { return };
            let Some(work) = self.in_flight[s].as_mut() else {
                continue;
            };
            let bound = output_room(self.backend.as_ref(), &self.columns, &work.plan);
            let Ok(Some(reservation)) = self.store.try_reserve(bound) else {
                self.idle.push(slot);
                return;
            };
            work.speculated = true;
            let copy = work.clone();
            tracing::warn!(batch = copy.plan.index, timeout = ?timeout, "batch past its timeout; sending it to another actor");
            self.idle_since[slot] = None;
            self.send_to(slot, copy, reservation, ctx);
        }
    }

    /// Takes the first result of a batch; a later copy's is dropped, and a
    /// copy's failure is ignored while another copy is still running.
    fn settle(&mut self, done: Computed, work: Work, ctx: &mut Context<Self>) {
        let index = work.plan.index;
        let left = self.copies.get(&index).map_or(0, |c| c - 1);
        if left == 0 {
            self.copies.remove(&index);
        } else {
            self.copies.insert(index, left);
        }
        if self.settled.contains(&index) {
            if left == 0 {
                self.settled.remove(&index);
            }
            return; // a later copy: its output (if any) is dropped here
        }
        if left > 0 {
            if done.outcome.is_err() {
                return; // another copy is still running
            }
            self.settled.insert(index);
        }
        self.computed(done, work, ctx);
    }

    fn computed(&mut self, done: Computed, mut work: Work, ctx: &mut Context<Self>) {
        match done.outcome {
            Ok((output, poison, counters)) => {
                drop(work.input);
                for p in poison {
                    let e = RowError {
                        path: self.cfg.input_name.clone(),
                        line: p.line,
                        row: p.row,
                        column: None,
                        message: format!("the model fails on this row alone: {}", p.message),
                        excerpt: String::new(),
                        place: None,
                    };
                    if !self.cfg.skip_bad_rows {
                        return self.fail(PipelineError::ModelRow(Box::new(e)));
                    }
                    work.errors.push(e);
                }
                work.errors.sort_by_key(|e| e.row);
                self.deliver(work.plan, Some(output), work.errors, counters, ctx);
            }
            Err((error, Some(reservation)))
                if work.attempts <= self.cfg.max_retries.saturating_add(1) =>
            {
                tracing::warn!(batch = done.index, attempt = work.attempts, error = %error, "batch failed, retrying");
                work.input.set_holder(Holder::Source);
                self.ready.push_front((work, reservation));
            }
            Err((error, _)) => self.fail(PipelineError::Model {
                batch: done.index,
                first_line: work.plan.lines.0,
                last_line: work.plan.lines.1,
                attempts: work.attempts,
                error,
            }),
        }
    }

    fn deliver(
        &mut self,
        plan: BatchPlan,
        output: Option<ObjectRef>,
        errors: Vec<RowError>,
        counters: crate::messages::Counters,
        ctx: &mut Context<Self>,
    ) {
        if let Some(o) = &output {
            o.set_holder(Holder::Reorder);
        }
        let index = plan.index;
        self.delivering += 1;
        let fut = self.actors.sink.send(Deliver {
            plan,
            output,
            errors,
            counters,
        });
        ctx.spawn(wrap_future(fut).map(move |res, act: &mut Self, ctx| {
            act.delivering -= 1;
            act.unfinished.remove(&index);
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => act.fail(e),
                Err(_) => act.fail(PipelineError::ActorGone("sink")),
            }
            act.pump(ctx);
        }));
    }

    /// Slots whose actor is still on a batch that a finish must wait for:
    /// not one already settled by another copy, and, once stopping, not
    /// one past the timeout (abandoned).
    fn waiting_on(&self) -> impl Iterator<Item = usize> + '_ {
        let stop_expired = match (self.stopping_since, self.cfg.timeout) {
            (Some(since), Some(t)) => since.elapsed() > t,
            _ => false,
        };
        (0..self.in_flight.len()).filter(move |&s| {
            self.in_flight[s]
                .as_ref()
                .is_some_and(|w| !self.settled.contains(&w.plan.index) && !stop_expired)
        })
    }

    fn maybe_finish(&mut self, ctx: &mut Context<Self>) {
        let busy = self.source_busy || self.delivering > 0 || self.waiting_on().next().is_some();
        if self.finishing
            || busy
            || !self.ready.is_empty()
            || !(self.is_stopping() || self.exhausted)
        {
            return;
        }
        self.finishing = true;
        let complete = !self.is_stopping();
        let fut = self.actors.sink.send(Finish { complete });
        ctx.spawn(wrap_future(fut).map(move |res, act: &mut Self, ctx| {
            let sink = match res {
                Ok(r) => r,
                Err(_) => Err(PipelineError::ActorGone("sink")),
            };
            let outcome = match (act.failure.take(), sink) {
                (Some(e), _) => Err(e),
                (None, Err(e)) => Err(e),
                (None, Ok(_)) if act.cancel.load(Ordering::Relaxed) && !complete => {
                    Err(PipelineError::Cancelled)
                }
                (None, Ok(summary)) => Ok(summary),
            };
            if let Some(done) = act.done.take() {
                let _ = done.send(outcome);
            }
            ctx.stop();
        }));
    }
}

/// The store room a batch's output may need: the backend's bound of its
/// values, and with passthrough the values copied (never more than the
/// input's bytes: a decoded string is shorter than its JSON text).
fn output_room(backend: &dyn Backend, columns: &OutputColumns, plan: &BatchPlan) -> usize {
    output_room_of(backend, columns, plan.rows, plan.bytes, plan.quotes)
}

fn output_room_of(
    backend: &dyn Backend,
    columns: &OutputColumns,
    rows: usize,
    bytes: usize,
    quotes: usize,
) -> usize {
    let copied = if columns.passthrough.is_empty() {
        0
    } else {
        bytes
    };
    let values = backend.result_bytes_bound_quoted(rows, bytes, quotes) + copied;
    output_bound(&columns.schema, rows, values)
}

/// The store room the Scheduler reserves for a batch of `rows` rows
/// spanning `bytes` bytes of lines holding `quotes` `"`s (counted where
/// the schema has lists): its input and its output's bound, as admission
/// computes them. Growing in each, so one row's need is a floor of any
/// batch's that holds it.
pub fn batch_need(
    backend: &dyn Backend,
    columns: &OutputColumns,
    rows: usize,
    bytes: usize,
    quotes: usize,
) -> usize {
    input_bound(&columns.request, rows, bytes)
        + output_room_of(backend, columns, rows, bytes, quotes)
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let loads: Vec<_> = self
            .actors
            .workers
            .iter()
            .map(|w| w.send(LoadModel))
            .collect();
        ctx.spawn(wrap_future(futures_util::future::join_all(loads)).map(
            |results, act: &mut Self, ctx| {
                for r in results {
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => act.fail(e),
                        Err(_) => act.fail(PipelineError::ActorGone("backend")),
                    }
                }
                act.loaded = true;
                act.pump(ctx);
            },
        ));
        // Cancellation is a flag; look at it (and at released memory) often.
        ctx.run_interval(Duration::from_millis(20), |act, ctx| act.pump(ctx));
    }
}

#[cfg(test)]
mod tests {
    //! Admission and speculation, through the one way a pipeline starts
    //! ([`crate::pipeline::start`]), rows from memory and results streamed.

    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::checkpoint::Todo;
    use crate::input::RowLimits;
    use crate::parts::{table_schema, OutputFormat};
    use crate::pipeline::{self, Feed, PipelineConfig};
    use crate::sink::{ResultBatch, ResultSender, SinkConfig};
    use crate::{
        Backend, Device, Model, ModelError, OutputColumns, PipelineError, Progress, RequestBatch,
        RequestSchema, ResultWriter, StoreStats,
    };

    /// Calls `f` with each batch's first input row (its batch index, at one
    /// row a batch), then answers each row with its text.
    struct Hooked(Arc<dyn Fn(u64) + Send + Sync>);

    impl Model for Hooked {
        fn predict(&self, batch: &RequestBatch, out: &mut ResultWriter) -> Result<(), ModelError> {
            (self.0)(batch.row(0));
            for i in 0..batch.len() {
                let text = batch.field(0, i).unwrap_or_default();
                out.push(batch.row(i), &format!("{{\"t\":{text:?}}}"));
            }
            Ok(())
        }
    }

    impl Backend for Hooked {
        fn schema(&self) -> RequestSchema {
            RequestSchema::text_with_id("text", "id")
        }
        fn result_bytes_bound(&self, _: usize, input_bytes: usize) -> usize {
            input_bytes + 64
        }
        fn load(&self, _: &Device) -> Result<Arc<dyn Model>, ModelError> {
            Ok(Arc::new(Hooked(self.0.clone())))
        }
    }

    struct Run {
        outcome: Result<crate::messages::SinkSummary, PipelineError>,
        stats: StoreStats,
        rows: Vec<u64>,
    }

    /// `rows` rows, one a batch, through `actors` actors of `hook`'s model.
    fn run(
        rows: usize,
        actors: usize,
        store_bytes: usize,
        reorder_window: Option<usize>,
        timeout: Option<Duration>,
        hook: impl Fn(u64) + Send + Sync + 'static,
    ) -> Run {
        let backend: Arc<dyn Backend> = Arc::new(Hooked(Arc::new(hook)));
        let columns = OutputColumns::new(backend.as_ref(), &[], None);
        let feed = (0..rows).map(|i| format!("{{\"id\":{i},\"text\":\"row {i}\"}}").into_bytes());
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ResultBatch>(rows + 1);
        let sink = SinkConfig {
            dir: Default::default(),
            preserve_order: reorder_window.is_some(),
            todo: Todo {
                shard_batches: 1 << 20,
                ..Todo::default()
            },
            done_shards: Default::default(),
            stream: Some(ResultSender {
                tx,
                cancel: cancel.clone(),
            }),
            format: OutputFormat::Jsonl,
            table: table_schema(&columns.schema, &[], false),
            name_width: 5,
            publish: None,
        };
        let cfg = PipelineConfig {
            feed: Feed::Rows {
                name: "rows".into(),
                rows: Box::new(feed),
            },
            backend,
            devices: vec![Device::Cpu; actors],
            shared_model: None,
            columns,
            store_bytes,
            holder_accounting: false,
            batch_size: 1,
            limits: RowLimits {
                max_line_bytes: 1 << 20,
            },
            skip_bad_rows: false,
            max_retries: 0,
            reorder_window,
            timeout,
            input_name: "rows".into(),
            input_key: "".into(),
            sink,
            progress: Arc::new(Progress::default()),
            cancel,
        };
        let (outcome, stats) = actix::System::new()
            .block_on(async move { pipeline::start(cfg).unwrap().finish().await });
        let mut out = Vec::new();
        while let Ok(b) = rx.try_recv() {
            out.extend(b.results.iter().map(|(r, _)| *r));
        }
        Run {
            outcome,
            stats,
            rows: out,
        }
    }

    #[test]
    fn admission_stays_within_the_reorder_window_behind_a_slow_batch() {
        // Batch 0 is slow; three other actors are free. With a window of 3,
        // only batches 1 and 2 may be admitted until batch 0 is done.
        let first_done = Arc::new(AtomicBool::new(false));
        let beyond = Arc::new(Mutex::new(Vec::new()));
        let (done, seen) = (first_done.clone(), beyond.clone());
        let r = run(24, 4, 1 << 20, Some(3), None, move |i| {
            if i == 0 {
                std::thread::sleep(Duration::from_millis(300));
                done.store(true, Ordering::SeqCst);
            } else if !done.load(Ordering::SeqCst) {
                seen.lock().unwrap().push(i);
            }
        });
        r.outcome.unwrap();
        assert_eq!(
            r.rows,
            (0..24).collect::<Vec<u64>>(),
            "every row once, in order"
        );
        let seen = beyond.lock().unwrap().clone();
        assert!(
            seen.iter().all(|&i| i < 3),
            "batches admitted past the window while batch 0 ran: {seen:?}"
        );
        assert!(!seen.is_empty(), "the free actors took batches 1 and 2");
    }

    #[test]
    fn admission_never_holds_more_than_the_budget_and_a_batch_that_cannot_fit_is_named() {
        // Many fast batches through a store with room for few at a time.
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let budget = 16 << 10;
        let r = run(400, 2, budget, Some(64), None, move |_| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        r.outcome.unwrap();
        assert_eq!(r.rows.len(), 400);
        assert!(r.stats.peak <= budget as u64, "{:?}", r.stats);
        assert_eq!((r.stats.live, r.stats.reserved), (0, 0), "all released");
        // A store smaller than one batch's input and output room: refused
        // before anything runs, naming the batch's lines.
        let r = run(3, 1, 256, Some(4), None, |_| {});
        match r.outcome {
            Err(PipelineError::BatchTooLarge {
                batch: 0,
                first_line: 1,
                last_line: 1,
                budget: 256,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_batch_late_past_the_timeout_goes_to_an_idle_actor_and_is_written_once() {
        // Batch 5's first attempt hangs for a second; with a 100 ms timeout
        // an idle actor computes it again and that result is the one kept.
        let attempts = Arc::new(AtomicU64::new(0));
        let a = attempts.clone();
        let r = run(
            12,
            3,
            1 << 20,
            Some(8),
            Some(Duration::from_millis(100)),
            move |i| {
                if i == 5 && a.fetch_add(1, Ordering::SeqCst) == 0 {
                    std::thread::sleep(Duration::from_secs(1));
                }
            },
        );
        r.outcome.unwrap();
        assert_eq!(attempts.load(Ordering::SeqCst), 2, "batch 5 was sent twice");
        assert_eq!(
            r.rows,
            (0..12).collect::<Vec<u64>>(),
            "each row once, in order"
        );
    }
}
