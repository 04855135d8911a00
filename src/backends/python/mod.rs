//! `python`: a Python class as the model, run in worker processes, as Ray
//! Data users write it for `map_batches`:
//!
//! ```text
//!  class Scorer:
//!      output_schema = pa.schema([("score", pa.float32())])  # optional
//!      def __init__(self, **kwargs): ...         # loads the model, once
//!      def __call__(self, batch): ...            # a batch in, as many rows out
//! ```
//!
//! Each model (one per actor with `compute = "actors"`, one for the pool
//! with `tasks`) is one worker process per concurrent call. A batch is not
//! sent to the worker: the worker maps the object store's shared memory
//! (its memfd, passed over the control socket once) and reads the batch's
//! Arrow IPC in place; its result is written as Arrow IPC into room
//! reserved for it in the store, so it is counted like every other object.
//! Only offsets, lengths and errors cross the socket ([`worker`]).
//!
//! Faults: an exception fails the batch with its traceback's last lines
//! (retries and row isolation as for any model); a worker that dies or
//! gives no answer within `batch.timeout` is killed and replaced on the
//! next call (counted as `python_worker_restarts`), and the batch fails, so
//! a row that kills every worker ends up alone among the bad rows.

mod class;
mod sheaf_serve;
mod worker;

pub use class::{create, BatchFormat, PythonOptions};
pub use sheaf_serve::{create as create_sheaf, SheafOptions, SheafSpec};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use stook_actors::results::{output_bound, result_columns};
use stook_actors::{
    Backend, Device, Holder, Model, ModelError, ObjectStore, RequestBatch, RequestSchema,
    Reservation, ResultWriter,
};

use crate::config::ConfigProblem;
use worker::{Fault, Launch, Worker};

/// How long a worker may take to import the module and read what it
/// declares when the config is read.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(600);

fn default_python() -> String {
    "python3".into()
}

fn default_per_row() -> usize {
    1024
}

fn default_per_byte() -> usize {
    2
}

/// Room reserved in the store for a batch's results.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Room {
    /// This many bytes per row …
    #[serde(default = "default_per_row")]
    pub result_bytes_per_row: usize,
    /// … plus this many per byte of the batch's input.
    #[serde(default = "default_per_byte")]
    pub result_bytes_per_input_byte: usize,
}

impl Room {
    fn bound(&self, rows: usize, input_bytes: usize) -> usize {
        rows.saturating_mul(self.result_bytes_per_row)
            .saturating_add(input_bytes.saturating_mul(self.result_bytes_per_input_byte))
    }
}

/// A backend whose model runs in Python workers: a class (`python`) or a
/// sheaf-serve backend (`sheaf`); they differ in what the worker loads.
pub struct PythonBackend {
    python: String,
    /// The worker's `load` message.
    load: Value,
    requests: RequestSchema,
    schema: Option<SchemaRef>,
    /// The declared schema as the worker wrote it, to check at load.
    schema_text: Option<String>,
    room: Room,
    /// Files whose bytes are the model's fingerprint.
    files: Vec<String>,
    timeout: Option<Duration>,
    calls: usize,
    /// The interpreter that described the model, for the first CPU model
    /// to load in.
    spare: Mutex<Option<Worker>>,
}

/// A `model.options.<key>` problem.
fn problem(key: &str, m: String) -> Vec<ConfigProblem> {
    vec![ConfigProblem::new(format!("model.options.{key}"), m)]
}

/// Starts an interpreter that answers `msg` (a `describe` message) and
/// exits: what the module or backend declares, before the run.
/// `raised_key` names the option a Python exception is blamed on.
/// The interpreter is kept: the first CPU model loads in it (its imports
/// are done already) rather than in a new one.
fn describe(
    python: &str,
    msg: &Value,
    raised_key: &str,
) -> Result<(Value, Worker), Vec<ConfigProblem>> {
    let mut w = Worker::spawn(&cpu_launch(python)).map_err(|m| problem("python", m))?;
    let reply = w.call(msg, Some(DESCRIBE_TIMEOUT)).map_err(|f| match f {
        Fault::Raised(m) => problem(raised_key, m),
        Fault::Lost(m) => problem("python", m),
    })?;
    Ok((reply, w))
}

/// How a worker for the CPU starts: no GPU visible to it.
fn cpu_launch(python: &str) -> Launch {
    Launch {
        python: python.to_string(),
        cuda_visible: Some(String::new()),
    }
}

/// Whether an option's value names a file (`models/score.py`,
/// `.venv/bin/python`) rather than a module or a command on PATH: the
/// config loader takes such values from the config file's folder.
pub(crate) fn names_a_file(value: &str) -> bool {
    value.ends_with(".py") || value.contains('/')
}

/// A schema from an empty Arrow IPC stream, base64.
fn decode_schema(text: &str) -> Result<SchemaRef, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("internal: output_schema not base64: {e}"))?;
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| format!("output_schema cannot be read as Arrow: {e}"))?;
    Ok(reader.schema())
}

impl Backend for PythonBackend {
    fn schema(&self) -> RequestSchema {
        self.requests.clone()
    }

    fn result_bytes_bound(&self, rows: usize, input_bytes: usize) -> usize {
        self.room.bound(rows, input_bytes)
    }

    fn output_schema(&self) -> Option<SchemaRef> {
        self.schema.clone()
    }

    fn result_neutral_options(&self) -> &'static [&'static str] {
        &["result_bytes_per_row", "result_bytes_per_input_byte"]
    }

    /// The bytes of the module's file (or the imported files): editing
    /// the model's code is a change a resume must notice.
    fn fingerprint(&self) -> String {
        if self.files.is_empty() {
            return String::new();
        }
        let mut h = Sha256::new();
        for f in &self.files {
            h.update(f.as_bytes());
            h.update(std::fs::read(f).unwrap_or_default());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn load(&self, device: &Device) -> Result<Arc<dyn Model>, ModelError> {
        let launch = match device {
            Device::Cuda(i) => Launch {
                python: self.python.clone(),
                cuda_visible: Some(i.to_string()),
            },
            Device::Cpu => cpu_launch(&self.python),
        };
        let model = PythonModel {
            launch,
            load: self.load.clone(),
            schema_text: self.schema_text.clone(),
            result_schema: result_columns(self.schema.clone()),
            typed: self.schema.is_some(),
            timeout: self.timeout,
            room: self.room,
            slots: (0..self.calls).map(|_| Mutex::new(None)).collect(),
            next: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
        };
        // Every worker loads at once; the first failure is the answer.
        let mut started = Vec::new();
        for _ in 0..self.calls {
            let spare = match device {
                Device::Cpu => lock(&self.spare).take(),
                Device::Cuda(_) => None,
            };
            let mut w = match spare {
                Some(w) => w,
                None => Worker::spawn(&model.launch).map_err(ModelError::new)?,
            };
            w.send_load(&model.load).map_err(fault)?;
            started.push(w);
        }
        for (slot, mut w) in model.slots.iter().zip(started) {
            model.loaded(&mut w)?;
            *lock(slot) = Some(w);
        }
        Ok(Arc::new(model))
    }
}

struct PythonModel {
    launch: Launch,
    load: Value,
    schema_text: Option<String>,
    result_schema: SchemaRef,
    typed: bool,
    timeout: Option<Duration>,
    room: Room,
    /// One worker per call that may run at once.
    slots: Vec<Mutex<Option<Worker>>>,
    next: AtomicU64,
    /// Workers replaced since the last batch that succeeded.
    restarts: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn fault(f: Fault) -> ModelError {
    match f {
        Fault::Raised(m) => {
            ModelError::new(format!("the Python model's class failed to load: {m}"))
        }
        Fault::Lost(m) => ModelError::new(m),
    }
}

impl PythonModel {
    /// Waits for a worker's answer to `load`.
    fn loaded(&self, w: &mut Worker) -> Result<(), ModelError> {
        let reply = w.reply(None).map_err(fault)?;
        let schema = reply
            .get("schema")
            .and_then(Value::as_str)
            .map(str::to_string);
        if schema != self.schema_text {
            return Err(ModelError::new(
                "the class's output_schema changed since the config was read",
            ));
        }
        tracing::info!(pid = w.pid(), "Python worker loaded the model");
        Ok(())
    }

    /// A free worker's slot, or the next one in turn to wait for.
    fn slot(&self) -> MutexGuard<'_, Option<Worker>> {
        for s in &self.slots {
            if let Ok(g) = s.try_lock() {
                return g;
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.slots.len();
        lock(&self.slots[i])
    }

    /// Runs one batch on `w`: its result object, in the store.
    fn run(&self, w: &mut Worker, batch: &RequestBatch) -> Result<Computed, Fault> {
        let Some((obj, start)) = batch.object() else {
            return Err(Fault::Raised(
                "internal: the batch is not in the object store".into(),
            ));
        };
        let store = obj.store();
        w.attach(&store, self.timeout)?;
        let msg = json!({
            "op": "batch",
            "offset": obj.offset(),
            "length": obj.len(),
            "start": start,
            "rows": batch.len(),
            "input_key": batch.input_key(),
        });
        let reply = w.call(&msg, self.timeout)?;
        if let Some(invalid) = reply.get("invalid").and_then(Value::as_array) {
            let rows = invalid
                .iter()
                .filter_map(|v| Some((v.get(0)?.as_u64()? as usize, v.get(1)?.as_str()?)))
                .filter(|(i, _)| *i < batch.len())
                .map(|(i, why)| (i, why.to_string()))
                .collect();
            return Ok(Computed::Invalid(rows));
        }
        let Some(room) = reply.get("room").and_then(Value::as_u64) else {
            return Err(Fault::Lost(format!(
                "the worker answered {reply} to a batch"
            )));
        };
        let room = room as usize;
        let values = self.room.bound(batch.len(), batch.data_bytes());
        let allowed = output_bound(&self.result_schema, batch.len(), values);
        if room > allowed {
            w.call(&json!({"op": "abort"}), self.timeout)?;
            return Ok(Computed::TooLarge { room, allowed });
        }
        let reservation = match self.reserve(&store, room) {
            Ok(r) => r,
            Err(why) => {
                w.call(&json!({"op": "abort"}), self.timeout)?;
                return Ok(Computed::NoRoom(why));
            }
        };
        let at = reservation.offset();
        let reply = w.call(&json!({"op": "write", "offset": at}), self.timeout)?;
        if reply.get("written").and_then(Value::as_u64) != Some(room as u64) {
            return Err(Fault::Lost(format!(
                "the worker answered {reply} to writing {room} bytes"
            )));
        }
        let object = reservation
            .finish_written(room, Holder::InFlight)
            .map_err(|e| Fault::Lost(format!("internal: {e}")))?;
        let result = stook_actors::batch::decode_object(&object).map_err(|e| {
            Fault::Raised(format!("the worker's result is not readable as Arrow: {e}"))
        })?;
        Ok(Computed::Done(result))
    }

    /// Room for a result of `bytes`, waiting while the store is full (up
    /// to the batch timeout, or a minute).
    fn reserve(&self, store: &ObjectStore, bytes: usize) -> Result<Reservation, String> {
        let limit = self.timeout.unwrap_or(Duration::from_secs(60));
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match store.try_reserve(bytes) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) if started.elapsed() < limit => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Ok(None) => {
                    return Err(format!(
                    "no room for its {bytes} bytes of results in the object store within {:.0} s",
                    limit.as_secs_f64()
                ))
                }
                Err(e) => return Err(format!("its {bytes} bytes of results: {e}")),
            }
        }
    }
}

enum Computed {
    Done(arrow_array::RecordBatch),
    /// Requests the model's own types refuse: (index in the batch, why).
    Invalid(Vec<(usize, String)>),
    TooLarge {
        room: usize,
        allowed: usize,
    },
    NoRoom(String),
}

impl Model for PythonModel {
    fn predict(&self, batch: &RequestBatch, out: &mut ResultWriter) -> Result<(), ModelError> {
        if batch.is_empty() {
            return Ok(());
        }
        let lines = format!("lines {}–{}", batch.line(0), batch.line(batch.len() - 1));
        let mut slot = self.slot();
        if slot.is_none() {
            // The last worker here died: a new one loads the model again.
            // Loaded as at the start (the output_schema checked too); a
            // failure is no row's: the job stops, keeping what it wrote.
            let replaced = Worker::spawn(&self.launch)
                .map_err(ModelError::new)
                .and_then(|mut w| {
                    w.send_load(&self.load).map_err(fault)?;
                    self.loaded(&mut w)?;
                    Ok(w)
                });
            let w = replaced.map_err(|e| {
                ModelError::unavailable(format!(
                    "a replacement Python worker could not load the model: {}",
                    e.message
                ))
            })?;
            self.restarts.fetch_add(1, Ordering::Relaxed);
            *slot = Some(w);
        }
        let Some(w) = slot.as_mut() else {
            return Err(ModelError::new("internal: no worker"));
        };
        let result = match self.run(w, batch) {
            Ok(Computed::Done(r)) => r,
            Ok(Computed::TooLarge { room, allowed }) => {
                return Err(ModelError::unavailable(format!(
                    "the results of {lines} take {room} bytes, more than the {allowed} bytes reserved for them (model.options.result_bytes_per_row = {} per row plus result_bytes_per_input_byte = {} per input byte): raise them",
                    self.room.result_bytes_per_row, self.room.result_bytes_per_input_byte
                )))
            }
            Ok(Computed::Invalid(rows)) => {
                let Some((i, why)) = rows.into_iter().next() else {
                    return Err(ModelError::new("internal: an empty list of invalid rows"));
                };
                return Err(ModelError::for_row(
                    batch.row(i),
                    format!("the request is invalid: {why}"),
                ));
            }
            Ok(Computed::NoRoom(why)) => {
                return Err(ModelError::unavailable(format!("{lines}: {why}")))
            }
            Err(Fault::Raised(m)) => {
                return Err(ModelError::new(format!(
                    "the Python model raised on {lines}: {m}"
                )))
            }
            Err(Fault::Lost(m)) => {
                *slot = None;
                return Err(ModelError::new(format!("{lines}: {m}")));
            }
        };
        drop(slot);
        if self.typed {
            out.append(batch.rows(), result.columns().to_vec())?;
        } else {
            let texts = result
                .column(0)
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .ok_or_else(|| ModelError::new("internal: JSON results are not text"))?;
            for i in 0..batch.len() {
                out.push(batch.row(i), texts.value(i));
            }
        }
        let restarts = self.restarts.swap(0, Ordering::Relaxed);
        if restarts > 0 {
            out.count("python_worker_restarts", restarts);
        }
        Ok(())
    }
}
