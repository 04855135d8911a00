//! Reading a config file and checking it: every section parsed on its own,
//! every problem reported with its key, relative paths resolved against
//! the file's directory; and [`JobConfig::validate`], the one check run
//! wherever a config comes from.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use stook_actors::parts::OutputFormat;

use super::{
    parse_value_all, BatchConfig, CheckpointConfig, ConfigErrors, ConfigProblem, DeviceChoice,
    InputConfig, JobConfig, MemoryConfig, ModelConfig, OutputConfig, MAX_CONFIG,
};

const SECTIONS: [&str; 6] = ["input", "output", "model", "batch", "memory", "checkpoint"];

impl JobConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let refuse = |message: String| ConfigErrors {
            path: path.to_path_buf(),
            problems: vec![ConfigProblem::new("", message)],
        };
        // Read with a bound: a config is small, and a device or a huge
        // file named by mistake must not be read without end.
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| {
                std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_CONFIG + 1), &mut bytes)
            })
            .map_err(|e| refuse(format!("cannot read the config: {e}")))?;
        if bytes.len() as u64 > MAX_CONFIG {
            return Err(refuse(format!(
                "the config is larger than {} KiB: is this the right file?",
                MAX_CONFIG >> 10
            )));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            refuse(format!(
                "the config is not UTF-8 text (invalid byte at {})",
                e.utf8_error().valid_up_to() + 1
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base).map_err(|problems| ConfigErrors {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Parses config text; relative paths are taken from `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, Vec<ConfigProblem>> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!("line {line}: ")
                })
                .unwrap_or_default();
            vec![ConfigProblem::new("", format!("{at}invalid TOML: {msg}"))]
        })?;
        let mut problems = Vec::new();
        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                problems.push(ConfigProblem::new(
                    key.clone(),
                    format!("unknown section, expected one of: {}", SECTIONS.join(", ")),
                ));
            }
        }
        let input = section::<InputConfig>(&table, "input", true, &mut problems);
        let output = section::<OutputConfig>(&table, "output", true, &mut problems);
        let model = section::<ModelConfig>(&table, "model", true, &mut problems);
        let batch = section::<BatchConfig>(&table, "batch", false, &mut problems);
        let memory = section::<MemoryConfig>(&table, "memory", false, &mut problems);
        let checkpoint = section::<CheckpointConfig>(&table, "checkpoint", false, &mut problems);
        // The value checks of every section that parsed, so that a file
        // with several problems hears of all of them at once.
        if let Some(i) = &input {
            check_input(i, &mut problems);
        }
        if let Some(o) = &output {
            check_output(o, &mut problems);
        }
        if let Some(b) = &batch {
            check_batch(b, &mut problems);
        }
        if let Some(m) = &memory {
            check_memory(m, &mut problems);
        }
        if let Some(c) = &checkpoint {
            check_checkpoint(c, &mut problems);
        }
        match (input, output, model, batch, memory, checkpoint) {
            (
                Some(mut input),
                Some(mut output),
                Some(mut model),
                Some(batch),
                Some(memory),
                Some(checkpoint),
            ) if problems.is_empty() => {
                input.path = place(base, &input.path);
                output.path = place(base, &output.path);
                output.assemble = output.assemble.map(|a| place(base, &a));
                output.staging = output.staging.map(|s| place(base, &s));
                // A backend's `path` option names a file or folder: it too is
                // taken from the config file's directory.
                if let Some(toml::Value::String(p)) = model.options.get_mut("path") {
                    *p = base.join(&*p).to_string_lossy().into_owned();
                }
                // So are `module`, `python` and `imports` where they name
                // a file (`models/score.py`, `.venv/bin/python`), not a
                // module or a command on PATH.
                let resolve = |p: &mut String| {
                    if crate::backends::python::names_a_file(p) {
                        *p = base.join(&*p).to_string_lossy().into_owned();
                    }
                };
                for key in ["module", "python"] {
                    if let Some(toml::Value::String(p)) = model.options.get_mut(key) {
                        resolve(p);
                    }
                }
                if let Some(toml::Value::Array(a)) = model.options.get_mut("imports") {
                    for v in a {
                        if let toml::Value::String(p) = v {
                            resolve(p);
                        }
                    }
                }
                Ok(JobConfig {
                    input,
                    output,
                    model,
                    batch,
                    memory,
                    checkpoint,
                })
            }
            _ => Err(problems),
        }
    }

    /// A job over `input` into the directory `output` with `backend` (no
    /// options) and every other setting at its default, for a host that
    /// builds its config in code; change any field after. `Job::new`
    /// checks it as a config file is checked ([`JobConfig::validate`]).
    pub fn new(input: impl Into<PathBuf>, output: impl Into<PathBuf>, backend: &str) -> Self {
        let mut c = JobConfig::default();
        c.input.path = input.into();
        c.output.path = output.into();
        c.model.backend = backend.to_string();
        c
    }

    /// Every problem of the values (not of the TOML, which
    /// [`JobConfig::from_toml`] reports), each with its key: the same
    /// checks whether the config came from a file or was built in code.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        check_input(&self.input, &mut problems);
        check_output(&self.output, &mut problems);
        check_batch(&self.batch, &mut problems);
        check_memory(&self.memory, &mut problems);
        check_checkpoint(&self.checkpoint, &mut problems);
        problems
    }

    /// Rows per shard rounded to whole batches, as a count of batches.
    pub fn shard_batches(&self) -> u64 {
        (self.checkpoint.shard_rows.div_ceil(self.batch.size)).max(1) as u64
    }
}

fn check_input(i: &InputConfig, problems: &mut Vec<ConfigProblem>) {
    if i.columns.as_ref().is_some_and(Vec::is_empty) {
        problems.push(ConfigProblem::new(
            "input.columns",
            "expected at least one column name (leave it out to read every column)",
        ));
    }
    if i.max_line_bytes.0 == 0 {
        problems.push(ConfigProblem::new(
            "input.max_line_bytes",
            "expected more than 0 bytes",
        ));
    }
}

fn check_output(o: &OutputConfig, problems: &mut Vec<ConfigProblem>) {
    let mut seen = std::collections::BTreeSet::new();
    for n in &o.passthrough {
        if !seen.insert(n) {
            problems.push(ConfigProblem::new(
                "output.passthrough",
                format!("{n:?} is listed twice"),
            ));
        }
        if n == "_row" {
            problems.push(ConfigProblem::new(
                "output.passthrough",
                "\"_row\" is stook's own column (each result's input row)",
            ));
        }
    }
    if o.assemble.is_some() && o.format.0 != OutputFormat::Jsonl {
        problems.push(ConfigProblem::new(
            "output.assemble",
            format!(
                "assembles JSON Lines parts only; with output.format = {:?} read the \
                 part files as one dataset (pyarrow.dataset, DuckDB, Spark read a directory)",
                o.format.0.name()
            ),
        ));
    }
}

fn check_memory(m: &MemoryConfig, problems: &mut Vec<ConfigProblem>) {
    if m.object_store.0 == 0 {
        problems.push(ConfigProblem::new(
            "memory.object_store",
            "expected more than 0 bytes",
        ));
    }
}

fn check_checkpoint(c: &CheckpointConfig, problems: &mut Vec<ConfigProblem>) {
    if c.shard_rows == 0 {
        problems.push(ConfigProblem::new(
            "checkpoint.shard_rows",
            "expected at least 1, found 0",
        ));
    }
    if c.workers == Some(0) {
        problems.push(ConfigProblem::new(
            "checkpoint.workers",
            "expected at least 1, found 0",
        ));
    }
}

/// The most retries of a batch a config may ask for.
const MAX_RETRIES: u32 = 1000;

fn check_batch(b: &BatchConfig, problems: &mut Vec<ConfigProblem>) {
    if b.size == 0 {
        problems.push(ConfigProblem::new(
            "batch.size",
            "expected at least 1, found 0",
        ));
    }
    if b.num_actors == 0 || b.num_actors > 1024 {
        problems.push(ConfigProblem::new(
            "batch.num_actors",
            format!("expected 1 to 1024, found {}", b.num_actors),
        ));
    }
    if !(b.num_gpus_per_actor >= 0.0 && b.num_gpus_per_actor.is_finite()) {
        problems.push(ConfigProblem::new(
            "batch.num_gpus_per_actor",
            format!("expected 0 or more, found {}", b.num_gpus_per_actor),
        ));
    }
    if b.device == Some(DeviceChoice::Cpu) && b.num_gpus_per_actor > 0.0 {
        problems.push(ConfigProblem::new(
            "batch.device",
            format!(
                "\"cpu\" with num_gpus_per_actor = {}: set one or the other",
                b.num_gpus_per_actor
            ),
        ));
    }
    if b.max_retries > MAX_RETRIES {
        problems.push(ConfigProblem::new(
            "batch.max_retries",
            format!("expected at most {MAX_RETRIES}, found {}", b.max_retries),
        ));
    }
    if b.reorder_window == Some(0) {
        problems.push(ConfigProblem::new(
            "batch.reorder_window",
            "expected at least 1, found 0",
        ));
    }
}

/// Deserialises `[name]`, reporting a problem with its full key.
fn section<T: DeserializeOwned>(
    table: &toml::Table,
    name: &str,
    required: bool,
    problems: &mut Vec<ConfigProblem>,
) -> Option<T> {
    let value = match table.get(name) {
        Some(v) => v.clone(),
        None if required => {
            problems.push(ConfigProblem::new(name, "missing section"));
            return None;
        }
        None => toml::Value::Table(toml::Table::new()),
    };
    parse_value_all(value, name)
        .map_err(|ps| problems.extend(ps))
        .ok()
}

/// Where a configured path points: an object-storage URL as written, a
/// `file://` URL as its local path, anything else from `base` (the config
/// file's directory) when relative.
pub(crate) fn place(base: &Path, path: &Path) -> PathBuf {
    if stook_actors::remote::is_url(path) {
        return path.to_path_buf();
    }
    if let Some(local) = path.to_str().and_then(|s| s.strip_prefix("file://")) {
        return base.join(local);
    }
    base.join(path)
}
