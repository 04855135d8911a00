//! The output directory's checkpoint protocol is
//! [`stook_actors::checkpoint::protocol`]; this module adds what only the
//! config knows: the manifest header a job's config and input make.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use stook_actors::checkpoint::protocol::{merge_staged, prepare_staged, status_staged};
use stook_actors::checkpoint::remote::Staged;
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

/// The output: a local directory, or a prefix in object storage whose files
/// are written in a local staging directory first.
pub enum OutputDir {
    /// A local directory.
    Local(PathBuf),
    /// A prefix in object storage.
    Staged(Staged),
}

impl OutputDir {
    /// `config`'s output, for `worker`.
    pub fn of(config: &JobConfig, worker: Worker) -> Result<Self, RunError> {
        let o = &config.output;
        if !stook_actors::remote::is_url(&o.path) {
            return Ok(OutputDir::Local(o.path.clone()));
        }
        Staged::new(&o.path, worker, o.staging.as_deref())
            .map(OutputDir::Staged)
            .map_err(|source| RunError::Output {
                path: o.staging.clone().unwrap_or_else(|| o.path.clone()),
                source,
            })
    }

    /// `config`'s output for `stook status` and `stook merge`: a prefix is
    /// read through a staging directory of this process's own.
    pub fn inspecting(config: &JobConfig) -> Result<Self, RunError> {
        let o = &config.output;
        if !stook_actors::remote::is_url(&o.path) {
            return Ok(OutputDir::Local(o.path.clone()));
        }
        Staged::inspecting(&o.path)
            .map(OutputDir::Staged)
            .map_err(|source| RunError::Output {
                path: o.path.clone(),
                source,
            })
    }

    /// Where files are written (the staging directory for a prefix).
    pub fn dir(&self) -> &Path {
        match self {
            OutputDir::Local(d) => d,
            OutputDir::Staged(s) => &s.staging,
        }
    }

    /// The prefix to publish committed shards to, if any.
    pub fn staged(&self) -> Option<Staged> {
        match self {
            OutputDir::Local(_) => None,
            OutputDir::Staged(s) => Some(s.clone()),
        }
    }

    /// [`prepare`], on the directory or the prefix.
    pub fn prepare(
        &self,
        header: &ManifestHeader,
        fresh: bool,
        resume: bool,
    ) -> Result<Prepared, CheckpointError> {
        match self {
            OutputDir::Local(d) => prepare(d, header, fresh, resume),
            OutputDir::Staged(s) => prepare_staged(s, header, fresh, resume),
        }
    }

    /// [`status`], of the directory or the prefix.
    pub fn status(
        &self,
        header: &ManifestHeader,
        layout: Layout,
    ) -> Result<Status, CheckpointError> {
        match self {
            OutputDir::Local(d) => status(d, header, layout),
            OutputDir::Staged(s) => status_staged(s, header, layout),
        }
    }

    /// [`merge`], of the directory or the prefix.
    pub fn merge(
        &self,
        header: &ManifestHeader,
        layout: Layout,
        assemble: Option<&Path>,
    ) -> Result<Totals, CheckpointError> {
        match self {
            OutputDir::Local(d) => merge(d, header, layout, assemble),
            OutputDir::Staged(s) => merge_staged(s, header, layout, assemble),
        }
    }

    /// Writes the file `name` (a report) whole: in the directory, or
    /// uploaded to the prefix.
    pub fn write(&self, name: &str, text: &[u8]) -> Result<(), RunError> {
        let path = self.dir().join(name);
        std::fs::write(&path, text).map_err(|source| RunError::Output {
            path: path.clone(),
            source,
        })?;
        if let OutputDir::Staged(s) = self {
            s.upload(name, false)?;
        }
        Ok(())
    }
}
