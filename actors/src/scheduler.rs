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

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::fut::wrap_future;
use actix::prelude::*;
use tokio::sync::oneshot;

use crate::backend::BackendActor;
use crate::batch::{input_bound, output_bound};
use crate::error::PipelineError;
use crate::messages::{
    BatchPlan, Compute, Computed, Deliver, Finish, InputBatch, LoadModel, PlanBatch, ProduceBatch,
    SinkSummary,
};
use crate::model::Backend;
use crate::rows::{RequestSchema, RowError};
use crate::sink::Sink;
use crate::source::Source;
use crate::store::{Holder, ObjectRef, ObjectStore, Reservation};

/// How the Scheduler admits and retries.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
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
}

struct Work {
    plan: BatchPlan,
    input: ObjectRef,
    errors: Vec<RowError>,
    attempts: u32,
}

/// The actors a Scheduler drives.
pub struct Pipeline {
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
    schema: RequestSchema,
    actors: Pipeline,
    idle: Vec<usize>,
    loaded: bool,
    next_plan: Option<BatchPlan>,
    exhausted: bool,
    source_busy: bool,
    ready: VecDeque<(Work, Reservation)>,
    in_flight: Vec<Option<Work>>,
    delivering: usize,
    unfinished: BTreeSet<u64>,
    failure: Option<PipelineError>,
    cancel: Arc<AtomicBool>,
    finishing: bool,
    done: Option<oneshot::Sender<Result<SinkSummary, PipelineError>>>,
}

impl Scheduler {
    /// A Scheduler over `actors`; the run's outcome is sent on `done`.
    pub fn new(
        cfg: SchedulerConfig,
        store: ObjectStore,
        backend: Arc<dyn Backend>,
        actors: Pipeline,
        cancel: Arc<AtomicBool>,
        done: oneshot::Sender<Result<SinkSummary, PipelineError>>,
    ) -> Self {
        let n = actors.workers.len();
        Scheduler {
            cfg,
            store,
            schema: backend.schema(),
            backend,
            idle: (0..n).rev().collect(),
            in_flight: (0..n).map(|_| None).collect(),
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
            tracing::error!(error = %e, "run failing");
            self.failure = Some(e);
        }
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        if !self.loaded || self.finishing {
            return;
        }
        if self.is_stopping() {
            self.ready.clear();
            self.next_plan = None;
        } else {
            self.admit(ctx);
            self.dispatch(ctx);
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
        let input = input_bound(&self.schema, plan.rows, plan.bytes);
        let output = output_bound(
            plan.rows,
            self.backend.result_bytes_bound(plan.rows, plan.bytes),
        );
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
                },
                reservation,
            )),
            // Every row was bad: nothing to compute, but the Sink must
            // still see the batch to keep order and count.
            None => self.deliver(plan, None, errors, ctx),
        }
    }

    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        while !self.ready.is_empty() {
            let Some(slot) = self.idle.pop() else { return };
            let Some((mut work, reservation)) = self.ready.pop_front() else {
                return;
            };
            work.attempts += 1;
            work.input.set_holder(Holder::InFlight);
            let msg = Compute {
                index: work.plan.index,
                input: work.input.clone(),
                reservation,
                // After its retries, a batch is bisected to find the rows
                // that fail alone.
                isolate: work.attempts > self.cfg.max_retries + 1,
            };
            self.in_flight[slot] = Some(work);
            let fut = self.actors.workers[slot].send(msg);
            ctx.spawn(wrap_future(fut).map(move |res, act: &mut Self, ctx| {
                act.idle.push(slot);
                let work = act.in_flight[slot].take();
                match (res, work) {
                    (Ok(done), Some(work)) => act.computed(done, work, ctx),
                    _ => act.fail(PipelineError::ActorGone("backend")),
                }
                act.pump(ctx);
            }));
        }
    }

    fn computed(&mut self, done: Computed, mut work: Work, ctx: &mut Context<Self>) {
        match done.outcome {
            Ok((output, poison)) => {
                drop(work.input);
                for p in poison {
                    let e = RowError {
                        path: self.cfg.input_name.clone(),
                        line: p.line,
                        row: p.row,
                        column: None,
                        message: format!("the model fails on this row alone: {}", p.message),
                        excerpt: String::new(),
                    };
                    if !self.cfg.skip_bad_rows {
                        return self.fail(PipelineError::ModelRow(Box::new(e)));
                    }
                    work.errors.push(e);
                }
                work.errors.sort_by_key(|e| e.row);
                self.deliver(work.plan, Some(output), work.errors, ctx);
            }
            Err((error, Some(reservation))) if work.attempts <= self.cfg.max_retries + 1 => {
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

    fn maybe_finish(&mut self, ctx: &mut Context<Self>) {
        let busy =
            self.source_busy || self.delivering > 0 || self.in_flight.iter().any(Option::is_some);
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
