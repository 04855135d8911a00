//! Why a job did not complete: [`RunError`]. The actors' errors say what is
//! wrong with which file, batch or device; here they are told in the
//! user's terms, with the config key or the flag that changes the outcome.

use std::path::PathBuf;

use stook_actors::checkpoint::protocol::CheckpointError;
use stook_actors::checkpoint::ERRORS;
use stook_actors::devices::gpus_found;
use stook_actors::{DeviceError, PipelineError, RowError};

use crate::config::ConfigErrors;

/// Bad rows shown in an error; all are counted.
pub const ERRORS_SHOWN: usize = 20;

/// Why a job did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config is wrong.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// Rows are bad and on_error = "fail".
    #[error("{}", invalid_input_message(.errors, *.count, *.skippable))]
    InvalidInput {
        /// The first bad rows.
        errors: Vec<RowError>,
        /// How many in all.
        count: u64,
        /// Whether `on_error = "skip"` would go on past them (not past a
        /// repeated unique value).
        skippable: bool,
    },
    /// The input holds no row.
    #[error("{}: the input has no rows (the file is empty or only blank lines)", .path.display())]
    NoRows {
        /// The input.
        path: PathBuf,
    },
    /// A file could not be read or written (the input's fingerprint, the report).
    #[error("{}: {source}", .path.display())]
    Output {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The output directory cannot be prepared, resumed or merged.
    #[error("{}", checkpoint_message(.0))]
    Checkpoint(#[from] CheckpointError),
    /// The pipeline stopped.
    #[error("{}", pipeline_message(.0))]
    Pipeline(#[from] PipelineError),
}

fn invalid_input_message(errors: &[RowError], count: u64, skippable: bool) -> String {
    let mut s: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    if count > errors.len() as u64 {
        s.push(format!(
            "… and {} more bad rows",
            count - errors.len() as u64
        ));
    }
    let plural = if count == 1 { "" } else { "s" };
    s.push(if skippable {
        format!(
            "{count} bad row{plural} (set batch.on_error = \"skip\" to write them to {ERRORS} and go on)"
        )
    } else {
        format!("{count} bad row{plural}: fix the input (these cannot be skipped)")
    });
    s.join("\n")
}

impl RunError {
    /// Whether the run was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, RunError::Pipeline(PipelineError::Cancelled))
    }
}

/// A pipeline error with the config key that governs it.
fn pipeline_message(e: &PipelineError) -> String {
    match e {
        PipelineError::BatchTooLarge {
            batch,
            first_line,
            last_line,
            needed,
            budget,
        } => format!(
            "batch {batch} (input lines {first_line}-{last_line}) needs {needed} bytes of object \
             store (input and output), more than memory.object_store = {budget} bytes; raise \
             memory.object_store to at least {needed} bytes or lower batch.size"
        ),
        PipelineError::Device(d) => device_message(d),
        _ => e.to_string(),
    }
}

/// A device request that cannot be met, by the keys that made it.
fn device_message(e: &DeviceError) -> String {
    match e {
        DeviceError::NotEnoughGpus {
            actors,
            per_actor,
            needed,
            found,
            why,
        } => format!(
            "batch.num_gpus_per_actor = {per_actor} with batch.num_actors = {actors} needs \
             {needed} GPU(s), but {}",
            gpus_found(*found, why.as_deref())
        ),
        DeviceError::NotBuiltWithCuda { asked } => format!(
            "batch.device = \"{asked}\": this stook was built without CUDA (build with \
             `cargo build --release --features cuda`; see README \"CUDA\")"
        ),
        DeviceError::NoSuchGpu { index, found, why } => format!(
            "batch.device = \"cuda:{index}\": no such GPU ({found} found{})",
            why.as_ref().map(|w| format!("; {w}")).unwrap_or_default()
        ),
    }
}

/// An output directory that cannot be used, with what to do about it.
fn checkpoint_message(e: &CheckpointError) -> String {
    match e {
        CheckpointError::OutputNotEmpty { .. } => format!(
            "{e}; remove it, choose another output.path, or pass --fresh to delete stook's \
             files there"
        ),
        CheckpointError::ResumeOff { dir, manifest } => format!(
            "{}: cannot resume: it holds {manifest} and checkpoint.resume = false; pass --fresh \
             to start over",
            dir.display()
        ),
        CheckpointError::Changed { .. } => format!("{e}; pass --fresh to start over"),
        CheckpointError::OtherSplit { .. } => {
            format!("{e}; run the same split, or remove the directory (or run alone with --fresh)")
        }
        _ => e.to_string(),
    }
}
