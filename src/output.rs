//! The output directory's checkpoint protocol is
//! [`stook_actors::checkpoint::protocol`]; this module adds what only the
//! config knows: the manifest header a job's config and input make.

use std::collections::BTreeMap;

use stook_actors::checkpoint::{InputFingerprint, ManifestHeader, Worker};

pub use stook_actors::checkpoint::protocol::{
    is_ours, merge, prepare, status, worker_totals, CheckpointError, Layout, Prepared, Status,
    Totals, WorkerStatus, REPORT_STEM,
};

use crate::config::JobConfig;
use crate::runner::RunError;

/// The manifest header for `config` over its input now, for `worker`.
pub fn header_for(
    config: &JobConfig,
    backend: &dyn stook_actors::Backend,
    worker: Worker,
) -> Result<ManifestHeader, RunError> {
    let model_fingerprint = backend.fingerprint();
    let mut options = config.model.options.clone();
    for k in backend.result_neutral_options() {
        options.remove(*k);
    }
    let input = InputFingerprint::of(&config.input.path).map_err(|source| RunError::Output {
        path: config.input.path.clone(),
        source,
    })?;
    let mut c = BTreeMap::new();
    let mut put = |k: &str, v: serde_json::Value| {
        c.insert(k.to_string(), v);
    };
    put("model.backend", config.model.backend.clone().into());
    put(
        "model.options",
        serde_json::to_value(&options).unwrap_or_default(),
    );
    if !model_fingerprint.is_empty() {
        put("model.files", model_fingerprint.into());
    }
    put("batch.size", config.batch.size.into());
    put("checkpoint.shard_rows", config.checkpoint.shard_rows.into());
    put("output.preserve_order", config.output.preserve_order.into());
    if !config.output.passthrough.is_empty() {
        put(
            "output.passthrough",
            serde_json::to_value(&config.output.passthrough).unwrap_or_default(),
        );
    }
    if config.output.format.0 != stook_actors::parts::OutputFormat::Jsonl {
        put("output.format", config.output.format.0.name().into());
    }
    put("input.max_line_bytes", config.input.max_line_bytes.0.into());
    if let Some(columns) = &config.input.columns {
        put(
            "input.columns",
            serde_json::to_value(columns).unwrap_or_default(),
        );
    }
    Ok(ManifestHeader::new(input, c, worker))
}
