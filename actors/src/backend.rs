//! The BackendActor: holds one loaded model and computes the batches the
//! Scheduler hands it, one at a time (the Scheduler sends only to idle
//! actors, so no mailbox grows).
//!
//! - `compute = "actors"`: each actor owns its model, loaded once when the
//!   Scheduler sends `LoadModel`, before the first batch.
//! - `compute = "tasks"`: the actors are stateless workers over one
//!   [`SharedModel`], loaded on first use, once per [`SharedModel`].
//!
//! The model is held by `Arc`, outside anything a restart re-runs, so a
//! restarted actor never reloads it. A panic inside `predict` is caught and
//! becomes an error for that batch.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use actix::prelude::*;

use crate::batch::{RequestBatch, ResultWriter};
use crate::devices::Device;
use crate::error::PipelineError;
use crate::messages::{Compute, Computed, LoadModel, Poisoned};
use crate::model::{Backend, Model, ModelError};
use crate::progress::Progress;
use crate::rows::{FieldKind, RequestSchema};

/// One model shared by every worker of a tasks-mode pool, loaded on first
/// use. A host may keep one and hand it to several runs of the same backend.
#[derive(Default)]
pub struct SharedModel {
    cell: OnceLock<Result<Arc<dyn Model>, ModelError>>,
}

impl SharedModel {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(
        &self,
        backend: &dyn Backend,
        device: &Device,
        progress: &Progress,
    ) -> Result<Arc<dyn Model>, ModelError> {
        self.cell
            .get_or_init(|| {
                progress.model_loaded();
                load(backend, device)
            })
            .clone()
    }
}

fn load(backend: &dyn Backend, device: &Device) -> Result<Arc<dyn Model>, ModelError> {
    tracing::info!(device = %device, "loading model");
    catch_unwind(AssertUnwindSafe(|| backend.load(device))).unwrap_or_else(|p| Err(panicked(p)))
}

fn panicked(p: Box<dyn std::any::Any + Send>) -> ModelError {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    ModelError::new(format!("the model panicked: {what}"))
}

enum Slot {
    Own(Option<Arc<dyn Model>>),
    Shared(Arc<SharedModel>),
}

/// An actor holding (or sharing) one loaded model.
pub struct BackendActor {
    backend: Arc<dyn Backend>,
    schema: RequestSchema,
    device: Device,
    slot: Slot,
    progress: Arc<Progress>,
    input_key: Arc<str>,
    /// `"name":` and field index of each value copied into every result;
    /// whether the field holds a decoded string (to be quoted).
    passthrough: Vec<(String, usize, bool)>,
}

impl BackendActor {
    /// An actor that loads its own model on `LoadModel`.
    pub fn owning(backend: Arc<dyn Backend>, device: Device, progress: Arc<Progress>) -> Self {
        Self::with_slot(backend, device, Slot::Own(None), progress)
    }

    /// A stateless worker over a shared model.
    pub fn sharing(
        backend: Arc<dyn Backend>,
        device: Device,
        shared: Arc<SharedModel>,
        progress: Arc<Progress>,
    ) -> Self {
        Self::with_slot(backend, device, Slot::Shared(shared), progress)
    }

    fn with_slot(
        backend: Arc<dyn Backend>,
        device: Device,
        slot: Slot,
        progress: Arc<Progress>,
    ) -> Self {
        BackendActor {
            schema: backend.schema(),
            backend,
            device,
            slot,
            progress,
            input_key: Arc::from(""),
            passthrough: Vec::new(),
        }
    }

    /// Copies the input's `names` (columns or keys) into every result
    /// object, ahead of the backend's own keys; an absent or null value is
    /// left out. The Source must encode the same extended schema
    /// ([`RequestSchema::with_passthrough`]).
    pub fn with_passthrough(mut self, names: &[String]) -> Self {
        let (schema, idx) = self.schema.with_passthrough(names);
        self.passthrough = names
            .iter()
            .zip(idx)
            .map(|(n, i)| {
                let quote = matches!(
                    schema.fields[i].kind,
                    FieldKind::String | FieldKind::Literal(_)
                );
                (
                    format!("{}:", serde_json::Value::from(n.as_str())),
                    i,
                    quote,
                )
            })
            .collect();
        self.schema = schema;
        self
    }

    /// Puts the passthrough values at the front of each result object.
    fn pass_through(&self, batch: &RequestBatch, out: &mut ResultWriter) {
        if self.passthrough.is_empty() {
            return;
        }
        let (rows, results) = out.take();
        let mut i = 0;
        let mut members = String::new();
        for k in 0..rows.len() {
            let row = rows.value(k);
            // Results follow the batch's order; rows that failed alone are
            // missing from them.
            while i < batch.len() && batch.row(i) != row {
                i += 1;
            }
            members.clear();
            for (key, field, quote) in &self.passthrough {
                let Some(v) = batch.field(*field, i.min(batch.len().saturating_sub(1))) else {
                    continue;
                };
                if !members.is_empty() {
                    members.push(',');
                }
                members.push_str(key);
                if *quote {
                    members.push_str(&serde_json::Value::from(v).to_string());
                } else {
                    members.push_str(v);
                }
            }
            let json = results.value(k);
            if members.is_empty() {
                out.push(row, json);
                continue;
            }
            let rest = json
                .trim_start()
                .strip_prefix('{')
                .unwrap_or(json)
                .trim_start();
            let sep = if rest.starts_with('}') { "" } else { "," };
            out.push(row, &format!("{{{members}{sep}{rest}"));
        }
    }

    /// Labels every batch with `key`, what identifies the input by content
    /// ([`RequestBatch::input_key`]).
    pub fn with_input_key(mut self, key: Arc<str>) -> Self {
        self.input_key = key;
        self
    }

    fn model(&self) -> Result<Arc<dyn Model>, ModelError> {
        match &self.slot {
            Slot::Own(Some(m)) => Ok(m.clone()),
            Slot::Own(None) => Err(ModelError::new(
                "internal: batch sent before the model loaded",
            )),
            Slot::Shared(s) => s.get(self.backend.as_ref(), &self.device, &self.progress),
        }
    }

    fn compute(&self, msg: &Compute) -> Result<(ResultWriter, Vec<Poisoned>), ModelError> {
        let model = self.model()?;
        let batch = RequestBatch::decode(&msg.input, &self.schema)
            .map_err(|e| ModelError::new(format!("internal: cannot decode batch: {e}")))?
            .with_input_key(self.input_key.clone());
        let mut out = ResultWriter::new();
        let mut poison = Vec::new();
        if msg.isolate {
            isolate(model.as_ref(), &batch, &mut out, &mut poison);
        } else {
            call(model.as_ref(), &batch, &mut out)?;
        }
        self.pass_through(&batch, &mut out);
        Ok((out, poison))
    }
}

/// One `predict` call: a panic becomes an error, and a failed call leaves
/// `out` as it was.
fn call(model: &dyn Model, batch: &RequestBatch, out: &mut ResultWriter) -> Result<(), ModelError> {
    let (mark, counted) = (out.len(), out.counters().clone());
    let r = catch_unwind(AssertUnwindSafe(|| model.predict(batch, out)))
        .unwrap_or_else(|p| Err(panicked(p)))
        .and_then(|()| match out.len() - mark {
            n if n == batch.len() => Ok(()),
            n => Err(ModelError::new(format!(
                "the model returned {n} results for {} rows",
                batch.len()
            ))),
        });
    if r.is_err() {
        out.truncate(mark);
        out.set_counters(counted);
    }
    r
}

/// Computes what can be computed, bisecting failed ranges down to the rows
/// that fail alone, which go to `poison`.
fn isolate(
    model: &dyn Model,
    batch: &RequestBatch,
    out: &mut ResultWriter,
    poison: &mut Vec<Poisoned>,
) {
    match call(model, batch, out) {
        Ok(()) => {}
        Err(e) if batch.len() == 1 => poison.push(Poisoned {
            row: batch.row(0),
            line: batch.line(0),
            message: e.message,
        }),
        Err(_) => {
            let half = batch.len() / 2;
            isolate(model, &batch.slice(0, half), out, poison);
            isolate(model, &batch.slice(half, batch.len() - half), out, poison);
        }
    }
}

impl Actor for BackendActor {
    type Context = Context<Self>;
}

impl Handler<LoadModel> for BackendActor {
    type Result = Result<(), PipelineError>;

    fn handle(&mut self, _: LoadModel, _: &mut Context<Self>) -> Self::Result {
        if let Slot::Own(slot @ None) = &mut self.slot {
            self.progress.model_loaded();
            let model =
                load(self.backend.as_ref(), &self.device).map_err(|error| PipelineError::Load {
                    device: self.device.to_string(),
                    error,
                })?;
            *slot = Some(model);
        }
        Ok(())
    }
}

impl Handler<Compute> for BackendActor {
    type Result = MessageResult<Compute>;

    fn handle(&mut self, msg: Compute, _: &mut Context<Self>) -> Self::Result {
        let outcome = match self.compute(&msg) {
            Ok((out, poison)) => {
                let counters = out.counters().clone();
                out.encode(msg.reservation)
                    .map(|o| (o, poison, counters))
                    .map_err(|e| {
                        // The reservation was consumed; the Scheduler reserves anew.
                        (
                            ModelError::new(format!(
                                "the results exceed the backend's declared size bound: {e}"
                            )),
                            None,
                        )
                    })
            }
            Err(e) => Err((e, Some(msg.reservation))),
        };
        MessageResult(Computed {
            index: msg.index,
            outcome,
        })
    }
}
