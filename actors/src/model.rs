//! The `Backend` trait: what a model must offer the pipeline, and nothing
//! more. Built-in backends and a host's own use this same path.

use std::sync::Arc;

use crate::batch::RequestBatch;
use crate::devices::Device;
use crate::results::ResultWriter;
use crate::rows::RequestSchema;

/// A configured backend: knows its request schema and how to load a model.
/// Loading happens once per actor (or once per process in tasks mode).
pub trait Backend: Send + Sync + 'static {
    /// What each input row must contain.
    fn schema(&self) -> RequestSchema;

    /// An upper bound of the bytes of the values of `rows` results whose
    /// requests hold `input_bytes` bytes of field values (or row text):
    /// 4 bytes an f32, a string's bytes, for typed columns; the JSON text's
    /// bytes for a backend without an output schema. The output's room in
    /// the store is reserved from this (and the columns' shape, see
    /// [`crate::results::output_bound`]) before the batch exists.
    fn result_bytes_bound(&self, rows: usize, input_bytes: usize) -> usize;

    /// The same bound, knowing also how many `"` bytes the rows hold, for
    /// a schema with a list field: a backend whose results grow with the
    /// list's length (one vector per text) bounds the length by it.
    fn result_bytes_bound_quoted(&self, rows: usize, input_bytes: usize, quotes: usize) -> usize {
        let _ = quotes;
        self.result_bytes_bound(rows, input_bytes)
    }

    /// The typed columns of its results, appended with
    /// [`ResultWriter::append`] and written as they are to Parquet and Arrow
    /// parts (JSON Lines are encoded from them: field metadata in
    /// [`crate::json_lines`] says how). `None`: each result is a JSON object
    /// pushed with [`ResultWriter::push`], one `result` column.
    fn output_schema(&self) -> Option<arrow_schema::SchemaRef> {
        None
    }

    /// The typed columns of its results when the input is a table whose
    /// rows (as a backend that keeps whole rows gets them) have the columns
    /// `rows`; `None` for JSON Lines input or rows from memory. By default
    /// [`Backend::output_schema`], whatever the input.
    fn output_schema_for(
        &self,
        rows: Option<&arrow_schema::SchemaRef>,
    ) -> Option<arrow_schema::SchemaRef> {
        let _ = rows;
        self.output_schema()
    }

    /// Keys of its `[model.options]` that never change its results (CPU
    /// threads; a model folder's path where [`Backend::fingerprint`] hashes
    /// its files): left out of the config a resume compares, so changing
    /// them is not "config changed".
    fn result_neutral_options(&self) -> &'static [&'static str] {
        &[]
    }

    /// What identifies the model's files (a hash), for resume checks;
    /// empty for a model with none.
    fn fingerprint(&self) -> String {
        String::new()
    }

    /// Loads the model on `device`.
    fn load(&self, device: &Device) -> Result<Arc<dyn Model>, ModelError>;
}

/// A loaded model.
pub trait Model: Send + Sync + 'static {
    /// Computes one result per request row, in order, into `out`.
    fn predict(&self, batch: &RequestBatch, out: &mut ResultWriter) -> Result<(), ModelError>;
}

/// A model failure. `row` names the input row when the failure is one row's.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ModelError {
    /// What went wrong.
    pub message: String,
    /// The 0-based input row that caused it, if known.
    pub row: Option<u64>,
    /// The failure is no row's (a server that cannot be reached): the
    /// batch is retried as any failed batch, but never bisected to find a
    /// row at fault; after its retries the run stops, keeping what it
    /// committed, and a rerun resumes.
    pub unavailable: bool,
}

impl ModelError {
    /// A failure that is not one row's.
    pub fn new(message: impl Into<String>) -> Self {
        ModelError {
            message: message.into(),
            row: None,
            unavailable: false,
        }
    }

    /// A failure of what the model depends on (a server), no row's.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ModelError {
            unavailable: true,
            ..ModelError::new(message)
        }
    }

    /// A failure caused by input row `row`.
    pub fn for_row(row: u64, message: impl Into<String>) -> Self {
        ModelError {
            message: message.into(),
            row: Some(row),
            unavailable: false,
        }
    }
}
