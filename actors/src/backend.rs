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

use arrow_array::{ArrayRef, UInt64Array};

use crate::batch::RequestBatch;
use crate::devices::Device;
use crate::error::PipelineError;
use crate::messages::{Compute, Computed, LoadModel, Poisoned};
use crate::model::{Backend, Model, ModelError};
use crate::progress::Progress;
use crate::results::{encode_output, OutputColumns, ResultWriter};

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
    device: Device,
    slot: Slot,
    progress: Arc<Progress>,
    input_key: Arc<str>,
    /// The output object's columns.
    columns: OutputColumns,
}

impl BackendActor {
    /// An actor that loads its own model on `LoadModel`.
    pub(crate) fn owning(
        backend: Arc<dyn Backend>,
        device: Device,
        progress: Arc<Progress>,
    ) -> Self {
        Self::with_slot(backend, device, Slot::Own(None), progress)
    }

    /// A stateless worker over a shared model.
    pub(crate) fn sharing(
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
            columns: OutputColumns::new(backend.as_ref(), &[], None),
            backend,
            device,
            slot,
            progress,
            input_key: Arc::from(""),
        }
    }

    /// Writes results of `columns` (the run's: passthrough columns copied
    /// from the input ahead of the backend's own; an absent or null value
    /// is left out). The Source must encode the same extended request
    /// schema ([`OutputColumns::request`]).
    pub(crate) fn with_columns(mut self, columns: OutputColumns) -> Self {
        self.columns = columns;
        self
    }

    /// Labels every batch with `key`, what identifies the input by content
    /// ([`RequestBatch::input_key`]).
    pub(crate) fn with_input_key(mut self, key: Arc<str>) -> Self {
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

    fn compute(&self, msg: &Compute) -> Result<Computation, ModelError> {
        let model = self.model()?;
        let batch = RequestBatch::decode(&msg.input, &self.columns.request)
            .map_err(|e| ModelError::new(format!("internal: cannot decode batch: {e}")))?
            .with_input_key(self.input_key.clone());
        let cols = &self.columns;
        let mut out = ResultWriter::for_columns(cols.results.clone(), cols.typed);
        let mut poison = Vec::new();
        if msg.isolate {
            isolate(model.as_ref(), &batch, &mut out, &mut poison)?;
        } else {
            call(model.as_ref(), &batch, &mut out)?;
        }
        let counters = out.counters().clone();
        let (rows, results) = out
            .finish()
            .map_err(|e| ModelError::new(format!("the backend's results: {e}")))?;
        let mut columns = cols
            .passthrough_columns(&batch, &rows)
            .map_err(|e| ModelError::new(format!("internal: passthrough: {e}")))?;
        columns.extend(results);
        Ok(Computation {
            rows,
            columns,
            poison,
            counters,
        })
    }
}

/// A computed batch before it is encoded into the store.
struct Computation {
    rows: UInt64Array,
    columns: Vec<ArrayRef>,
    poison: Vec<Poisoned>,
    counters: crate::messages::Counters,
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
/// that fail alone, which go to `poison`. A failure that is no row's
/// ([`ModelError::unavailable`]) stops it: the batch fails as a whole.
fn isolate(
    model: &dyn Model,
    batch: &RequestBatch,
    out: &mut ResultWriter,
    poison: &mut Vec<Poisoned>,
) -> Result<(), ModelError> {
    match call(model, batch, out) {
        Ok(()) => Ok(()),
        Err(e) if e.unavailable => Err(e),
        Err(e) if batch.len() == 1 => {
            poison.push(Poisoned {
                row: batch.row(0),
                line: batch.line(0),
                message: e.message,
            });
            Ok(())
        }
        Err(_) => {
            let half = batch.len() / 2;
            isolate(model, &batch.slice(0, half), out, poison)?;
            isolate(model, &batch.slice(half, batch.len() - half), out, poison)
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
            Ok(c) => {
                let (poison, counters) = (c.poison, c.counters);
                encode_output(&self.columns.schema, c.rows, c.columns, msg.reservation)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{encode_input, input_bound};
    use crate::rows::{parse_row, RequestSchema};
    use crate::store::{ObjectRef, ObjectStore};

    /// Fails any call whose batch holds a text in `bad`.
    struct Picky {
        bad: Vec<&'static str>,
    }

    impl Model for Picky {
        fn predict(&self, batch: &RequestBatch, out: &mut ResultWriter) -> Result<(), ModelError> {
            for i in 0..batch.len() {
                let text = batch.field(0, i).unwrap_or_default();
                if self.bad.contains(&text) {
                    return Err(ModelError::new(format!("cannot do {text}")));
                }
                out.count("seen", 1);
                out.push(batch.row(i), &format!("{{\"t\":{:?}}}", text));
            }
            Ok(())
        }
    }

    fn batch(store: &ObjectStore, texts: &[&str]) -> (ObjectRef, RequestSchema) {
        let schema = RequestSchema::text_with_id("text", "id");
        let lines: Vec<String> = texts
            .iter()
            .map(|t| format!(r#"{{"text":{t:?}}}"#))
            .collect();
        let rows: Vec<_> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    i as u64,
                    i as u64 + 1,
                    parse_row(l.as_bytes(), &schema).unwrap(),
                )
            })
            .collect();
        let bound = input_bound(&schema, rows.len(), lines.iter().map(String::len).sum());
        let obj = encode_input(&schema, &rows, store.try_reserve(bound).unwrap().unwrap()).unwrap();
        (obj, schema)
    }

    #[test]
    fn isolation_finds_exactly_the_rows_that_fail_alone_and_keeps_the_rest_in_order() {
        let store = ObjectStore::new(1 << 20).unwrap();
        let texts = ["a", "b", "x", "c", "d", "e", "y", "f", "g"];
        let (obj, schema) = batch(&store, &texts);
        let b = RequestBatch::decode(&obj, &schema).unwrap();
        let model = Picky {
            bad: vec!["x", "y"],
        };
        let (mut out, mut poison) = (ResultWriter::new(), Vec::new());
        isolate(&model, &b, &mut out, &mut poison).unwrap();
        let rows: Vec<u64> = poison.iter().map(|p| p.row).collect();
        assert_eq!(rows, vec![2, 6]);
        assert_eq!(poison[0].line, 3);
        assert_eq!(poison[1].message, "cannot do y");
        // Failed calls' counts are dropped: each good row counted once.
        assert_eq!(out.counters().get("seen"), Some(&7));
        let (done, _) = out.finish().unwrap();
        assert_eq!(done.values().to_vec(), vec![0, 1, 3, 4, 5, 7, 8]);
    }

    #[test]
    fn an_unavailable_model_fails_the_batch_without_blaming_a_row() {
        struct Down;
        impl Model for Down {
            fn predict(&self, b: &RequestBatch, _: &mut ResultWriter) -> Result<(), ModelError> {
                Err(ModelError::unavailable(format!("down at row {}", b.row(0))))
            }
        }
        let store = ObjectStore::new(1 << 20).unwrap();
        let (obj, schema) = batch(&store, &["a", "b", "c"]);
        let b = RequestBatch::decode(&obj, &schema).unwrap();
        let (mut out, mut poison) = (ResultWriter::new(), Vec::new());
        let e = isolate(&Down, &b, &mut out, &mut poison).unwrap_err();
        assert!(e.unavailable && e.row.is_none(), "{e:?}");
        assert!(poison.is_empty() && out.is_empty());
    }

    #[test]
    fn a_failed_call_leaves_nothing_behind_and_a_short_answer_is_an_error() {
        let store = ObjectStore::new(1 << 20).unwrap();
        let (obj, schema) = batch(&store, &["a", "x", "b"]);
        let b = RequestBatch::decode(&obj, &schema).unwrap();
        let mut out = ResultWriter::new();
        let e = call(&Picky { bad: vec!["x"] }, &b, &mut out).unwrap_err();
        assert_eq!(e.message, "cannot do x");
        assert!(out.is_empty() && out.counters().is_empty());

        struct Short;
        impl Model for Short {
            fn predict(&self, b: &RequestBatch, out: &mut ResultWriter) -> Result<(), ModelError> {
                out.push(b.row(0), "{}");
                Ok(())
            }
        }
        let e = call(&Short, &b, &mut out).unwrap_err();
        assert_eq!(e.message, "the model returned 1 results for 3 rows");
        assert!(out.is_empty());
    }

    #[test]
    fn passthrough_columns_follow_the_results_that_remain() {
        let store = ObjectStore::new(1 << 20).unwrap();
        let (obj, _) = batch(&store, &["a", "b", "c", "d"]);
        let backend: Arc<dyn Backend> = Arc::new(PickyBackend);
        let cols = OutputColumns::new(backend.as_ref(), &["text".to_string()], None);
        let b = RequestBatch::decode(&obj, &cols.request).unwrap();
        // Rows 1 and 2 failed alone: their values are not passed through.
        let rows = UInt64Array::from(vec![0, 3]);
        let pass = cols.passthrough_columns(&b, &rows).unwrap();
        let s = arrow_array::cast::AsArray::as_string::<i32>(pass[0].as_ref());
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![Some("a"), Some("d")]);
        // A string field passes as a string; JSON ones as JSON text.
        assert!(!crate::json_lines::is_json_text(cols.schema.field(1)));
    }

    struct PickyBackend;

    impl Backend for PickyBackend {
        fn schema(&self) -> RequestSchema {
            RequestSchema::text_with_id("text", "id")
        }
        fn result_bytes_bound(&self, _: usize, input_bytes: usize) -> usize {
            input_bytes
        }
        fn load(&self, _: &Device) -> Result<Arc<dyn Model>, ModelError> {
            Ok(Arc::new(Picky { bad: vec![] }))
        }
    }
}
