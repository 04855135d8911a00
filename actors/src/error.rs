//! Errors of the actors crate, one enum per concern.

use std::io;
use std::path::PathBuf;

use crate::devices::DeviceError;
use crate::model::ModelError;
use crate::rows::RowError;

/// The object store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The budget cannot hold even one aligned object.
    #[error("an object store budget of {budget} bytes is too small")]
    BudgetTooSmall {
        /// The budget asked for.
        budget: usize,
    },
    /// The shared-memory region could not be made.
    #[error("could not create the shared-memory object store: {0}")]
    Create(io::Error),
    /// A request larger than the whole budget.
    #[error("{requested} bytes requested, more than the whole budget of {budget} bytes")]
    TooLarge {
        /// Bytes asked for.
        requested: usize,
        /// The budget.
        budget: usize,
    },
}

/// Why a pipeline run stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The input could not be read.
    #[error("{path}: {source}")]
    Input {
        /// The input file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A bad row, with on_error = "fail".
    #[error("{0}")]
    Row(Box<RowError>),
    /// A row fails alone in the model, with on_error = "fail".
    #[error("{0}")]
    ModelRow(Box<RowError>),
    /// A batch is larger than the whole budget.
    #[error(
        "batch {batch} (input lines {first_line}-{last_line}) needs {needed} bytes of object store \
         (input and output), more than the store's {budget} bytes"
    )]
    BatchTooLarge {
        /// The batch index.
        batch: u64,
        /// Its first line.
        first_line: u64,
        /// Its last line.
        last_line: u64,
        /// Bytes it needs.
        needed: usize,
        /// The budget.
        budget: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Arrow encoding or decoding failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// The model failed on a batch, after its retries.
    #[error("model failed on batch {batch} (input lines {first_line}-{last_line}) after {attempts} attempt(s): {error}")]
    Model {
        /// The batch index.
        batch: u64,
        /// Its first line.
        first_line: u64,
        /// Its last line.
        last_line: u64,
        /// How often it was tried.
        attempts: u32,
        /// The last error.
        error: ModelError,
    },
    /// The model could not be loaded.
    #[error("loading the model on {device} failed: {error}")]
    Load {
        /// Where.
        device: String,
        /// Why.
        error: ModelError,
    },
    /// Devices could not be assigned.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Writing the output failed.
    #[error("{path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// An actor went away unexpectedly.
    #[error("internal: the {0} actor stopped unexpectedly")]
    ActorGone(&'static str),
    /// The run was cancelled (Ctrl-C or a host's cancel).
    #[error("cancelled")]
    Cancelled,
}

impl PipelineError {
    /// An output error at `path`.
    pub fn output(path: impl Into<PathBuf>, source: io::Error) -> Self {
        PipelineError::Output {
            path: path.into(),
            source,
        }
    }
}
