//! Every message between the actors. Data moves only as `ObjectRef`s and
//! `Reservation`s into the object store; no message carries rows.

use actix::prelude::*;

use crate::error::PipelineError;
use crate::model::ModelError;
use crate::rows::RowError;
use crate::store::{ObjectRef, Reservation};

/// A batch the Source has cut but not yet encoded: its extent and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchPlan {
    /// 0-based batch index, in input order.
    pub index: u64,
    /// Row number of its first row.
    pub first_row: u64,
    /// Rows in it (blank lines excluded, bad rows included).
    pub rows: usize,
    /// Bytes of its non-blank lines.
    pub bytes: usize,
    /// `"` bytes in those lines, counted only when the schema has a list
    /// field (each string in a list has two): see
    /// [`crate::Backend::result_bytes_bound_quoted`].
    pub quotes: usize,
    /// First and last 1-based line numbers.
    pub lines: (u64, u64),
    /// Blank lines skipped inside it.
    pub blank_lines: u64,
    /// Byte range in the input.
    pub(crate) range: (usize, usize),
}

/// Source: cut the next batch. `Ok(None)` at the end of the input.
#[derive(Message)]
#[rtype(result = "Result<Option<BatchPlan>, PipelineError>")]
pub struct PlanBatch;

/// Source: parse, validate and encode a planned batch into `reservation`.
#[derive(Message)]
#[rtype(result = "Result<InputBatch, PipelineError>")]
pub struct ProduceBatch {
    /// The plan returned by `PlanBatch`.
    pub plan: BatchPlan,
    /// Room for the encoded input.
    pub reservation: Reservation,
}

/// An encoded input batch.
#[derive(Debug)]
pub struct InputBatch {
    /// Its plan.
    pub plan: BatchPlan,
    /// The encoded good rows; `None` when every row was bad.
    pub object: Option<ObjectRef>,
    /// Good rows in the object.
    pub rows: usize,
    /// Rows refused (on_error = "skip").
    pub errors: Vec<RowError>,
}

/// BackendActor: load the model now (actors mode) or do nothing (tasks mode).
#[derive(Message)]
#[rtype(result = "Result<(), PipelineError>")]
pub struct LoadModel;

/// BackendActor: compute one batch.
#[derive(Message)]
#[rtype(result = "Computed")]
pub struct Compute {
    /// The batch index.
    pub index: u64,
    /// The input object.
    pub input: ObjectRef,
    /// Room for the output.
    pub reservation: Reservation,
    /// Bisect on failure to find the rows that fail alone.
    pub isolate: bool,
}

/// A row that fails alone in the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Poisoned {
    /// 0-based row number.
    pub row: u64,
    /// 1-based input line.
    pub line: u64,
    /// The model's error.
    pub message: String,
}

/// What a BackendActor returns for a batch.
pub struct Computed {
    /// The batch index.
    pub index: u64,
    /// The output and the rows that failed alone, or the error and the
    /// unused reservation (for a retry; `None` when it cannot be retried).
    pub outcome: Result<BatchOutput, (ModelError, Option<Reservation>)>,
}

/// A computed batch: its output object, the rows that failed alone, and
/// what the backend counted.
pub type BatchOutput = (ObjectRef, Vec<Poisoned>, Counters);

/// What a backend counted while computing a batch (texts truncated, say),
/// by name; summed over the batches the Sink writes, so a batch computed
/// twice (a retry, a copy after a timeout) counts once.
pub type Counters = std::collections::BTreeMap<String, u64>;

/// Sink: a finished batch, to be written in order.
#[derive(Message)]
#[rtype(result = "Result<(), PipelineError>")]
pub struct Deliver {
    /// Its plan.
    pub plan: BatchPlan,
    /// The output object; `None` when the batch had no good rows.
    pub output: Option<ObjectRef>,
    /// Rows refused by the Source.
    pub errors: Vec<RowError>,
    /// What the backend counted computing it.
    pub counters: Counters,
}

/// Sink: no more batches. `complete` when every batch was delivered.
#[derive(Message)]
#[rtype(result = "Result<SinkSummary, PipelineError>")]
pub struct Finish {
    /// Whether the whole input was delivered.
    pub complete: bool,
}

/// What the Sink wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkSummary {
    /// Result rows written.
    pub rows_written: u64,
    /// Bad rows written to the errors file.
    pub errors: u64,
    /// Blank lines skipped.
    pub blank_lines: u64,
    /// Part files committed, in order.
    pub parts: Vec<String>,
    /// Output bytes written.
    pub bytes_written: u64,
    /// The backend's counters, over the batches written.
    pub counters: Counters,
}
