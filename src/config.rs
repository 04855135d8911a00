//! The job config: typed, `deny_unknown_fields`, read once, and checked in
//! one pass that reports every problem with its TOML key.
//!
//! Relative paths are resolved against the config file's directory, so a
//! config means the same thing from any working directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use stook_actors::input::InputFormat;
use stook_actors::parts::OutputFormat;

/// The largest config file read.
const MAX_CONFIG: u64 = 1 << 20;

/// A whole job. `Default`: every setting at its default, no input, output
/// or backend named.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct JobConfig {
    /// `[input]`
    pub input: InputConfig,
    /// `[output]`
    pub output: OutputConfig,
    /// `[model]`
    pub model: ModelConfig,
    /// `[batch]`
    pub batch: BatchConfig,
    /// `[memory]`
    pub memory: MemoryConfig,
    /// `[checkpoint]`
    pub checkpoint: CheckpointConfig,
}

/// `[input]`: where rows come from.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// A JSON Lines file (plain, `.gz` or `.zst`), a Parquet file or
    /// directory of them, or an Arrow IPC file.
    pub path: PathBuf,
    /// The format, when the path's name does not say it.
    #[serde(default)]
    pub format: Option<FormatChoice>,
    /// A table's columns to read (the others are not); all when unset.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// The longest line accepted (for a table: the most bytes one row's
    /// fields may hold).
    #[serde(default = "default_max_line")]
    pub max_line_bytes: ByteSize,
}

/// `[input] format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct FormatChoice(pub InputFormat);

impl TryFrom<String> for FormatChoice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        InputFormat::parse(&s)
            .map(FormatChoice)
            .ok_or_else(|| format!("expected one of {}, found {s:?}", InputFormat::NAMES))
    }
}

impl From<FormatChoice> for String {
    fn from(f: FormatChoice) -> String {
        f.0.name().into()
    }
}

/// `[output]`: where results go.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// A directory: part files, manifest, errors, report.
    pub path: PathBuf,
    /// Write results in input order (default) or as they finish.
    #[serde(default = "yes")]
    pub preserve_order: bool,
    /// One file to assemble the parts into once every shard is committed.
    #[serde(default)]
    pub assemble: Option<PathBuf>,
    /// The part files' format.
    #[serde(default)]
    pub format: OutputFormatChoice,
    /// Input columns (or keys) copied into every result, ahead of the
    /// backend's own keys.
    #[serde(default)]
    pub passthrough: Vec<String>,
}

/// `[output] format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct OutputFormatChoice(pub OutputFormat);

impl TryFrom<String> for OutputFormatChoice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        OutputFormat::parse(&s)
            .map(OutputFormatChoice)
            .ok_or_else(|| format!("expected one of {}, found {s:?}", OutputFormat::NAMES))
    }
}

impl From<OutputFormatChoice> for String {
    fn from(f: OutputFormatChoice) -> String {
        f.0.name().into()
    }
}

/// `[model]`: which backend, with its own options.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A registered backend's name.
    pub backend: String,
    /// The backend's options, checked by the backend.
    #[serde(default)]
    pub options: toml::Table,
}

/// How work is executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compute {
    /// A fixed pool of actors, each with its own model.
    Actors,
    /// Stateless workers sharing one model, loaded once per process.
    Tasks,
}

/// What to do with a bad input row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Refuse the whole input before any model loads.
    Fail,
    /// Write the row to the errors file and go on.
    Skip,
}

/// `[batch] device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    /// The CPU.
    Cpu,
    /// GPUs found through NVML, most free memory first.
    Cuda,
    /// One GPU by index, for every actor.
    CudaIndex(u32),
    /// GPUs when NVML finds any, else the CPU.
    Auto,
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            "auto" => Ok(DeviceChoice::Auto),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::CudaIndex)
                .ok_or_else(|| {
                    format!("expected \"cpu\", \"cuda\", \"cuda:N\" or \"auto\", found {s:?}")
                }),
        }
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        match d {
            DeviceChoice::Cpu => "cpu".into(),
            DeviceChoice::Cuda => "cuda".into(),
            DeviceChoice::CudaIndex(i) => format!("cuda:{i}"),
            DeviceChoice::Auto => "auto".into(),
        }
    }
}

/// `[batch]`: batching and execution.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Rows per batch.
    #[serde(default = "default_batch_size")]
    pub size: usize,
    /// `actors` or `tasks`.
    #[serde(default = "default_compute")]
    pub compute: Compute,
    /// Actors (or workers, in tasks mode).
    #[serde(default = "default_actors")]
    pub num_actors: usize,
    /// GPUs per actor; fractions share a GPU.
    #[serde(default)]
    pub num_gpus_per_actor: f64,
    /// Where models run: `cpu`, `cuda` (GPUs from NVML by free memory),
    /// `cuda:N`, or `auto` (GPUs when NVML finds any, else the CPU).
    /// Default: `cuda` when num_gpus_per_actor > 0, else `cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceChoice>,
    /// `fail` or `skip`.
    #[serde(default = "default_on_error")]
    pub on_error: OnError,
    /// Retries of a failed batch.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Batches admitted ahead of the oldest unfinished one (order on).
    /// Default: 2 × num_actors + 2.
    #[serde(default)]
    pub reorder_window: Option<usize>,
    /// A batch in flight longer than this is sent again to an idle actor
    /// (the first result wins), and a stop waits no longer than this for
    /// batches in flight. Unset: no timeout.
    #[serde(default)]
    pub timeout: Option<Seconds>,
}

/// `[memory]`: the byte budget.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// The object store's budget.
    #[serde(default = "default_store")]
    pub object_store: ByteSize,
    /// Track which stage holds each object (for the report and trace
    /// logs); off only to measure what the tracking costs.
    #[serde(default = "yes")]
    pub holder_accounting: bool,
}

/// `[checkpoint]`: how output is cut into committed shards.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Rows per shard (rounded up to whole batches).
    #[serde(default = "default_shard_rows")]
    pub shard_rows: usize,
    /// Resume from the output directory's manifest when it has one.
    #[serde(default = "yes")]
    pub resume: bool,
    /// Workers the job is split among, for a scheduler that gives each
    /// process its index but not the count (a Kubernetes Indexed Job's
    /// `JOB_COMPLETION_INDEX`); read by the `stook` binary only.
    #[serde(default)]
    pub workers: Option<u64>,
}

fn yes() -> bool {
    true
}
fn default_max_line() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_batch_size() -> usize {
    256
}
fn default_compute() -> Compute {
    Compute::Actors
}
fn default_actors() -> usize {
    2
}
fn default_on_error() -> OnError {
    OnError::Fail
}
fn default_retries() -> u32 {
    2
}
fn default_store() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_shard_rows() -> usize {
    100_000
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            size: default_batch_size(),
            compute: default_compute(),
            num_actors: default_actors(),
            num_gpus_per_actor: 0.0,
            device: None,
            on_error: default_on_error(),
            max_retries: default_retries(),
            reorder_window: None,
            timeout: None,
        }
    }
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            path: PathBuf::new(),
            format: None,
            columns: None,
            max_line_bytes: default_max_line(),
        }
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            path: PathBuf::new(),
            preserve_order: true,
            assemble: None,
            format: OutputFormatChoice::default(),
            passthrough: Vec::new(),
        }
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            object_store: default_store(),
            holder_accounting: true,
        }
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            shard_rows: default_shard_rows(),
            resume: true,
            workers: None,
        }
    }
}

impl BatchConfig {
    /// The reorder window in force.
    pub fn window(&self) -> usize {
        self.reorder_window.unwrap_or(2 * self.num_actors + 2)
    }
}

/// One problem in a config, with its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The TOML key, dotted (`batch.size`), or empty for the whole file.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ConfigProblem {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigProblem {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in one config file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The config file.
    pub path: PathBuf,
    /// The problems, in file order where known.
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.path.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            if p.key.is_empty() {
                write!(f, "\n  {}", p.message)?;
            } else {
                write!(f, "\n  {}: {}", p.key, p.message)?;
            }
        }
        Ok(())
    }
}

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
                input.path = base.join(&input.path);
                output.path = base.join(&output.path);
                output.assemble = output.assemble.map(|a| base.join(a));
                // A backend's `path` option names a file or folder: it too is
                // taken from the config file's directory.
                if let Some(toml::Value::String(p)) = model.options.get_mut("path") {
                    *p = base.join(&*p).to_string_lossy().into_owned();
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

/// Deserialises a TOML table, reporting every key that is wrong, not only
/// the first: a failing key is noted and set aside, and the rest parsed
/// again (once per key at most).
pub fn parse_value_all<T: DeserializeOwned>(
    value: toml::Value,
    prefix: &str,
) -> Result<T, Vec<ConfigProblem>> {
    let mut value = value;
    let mut problems: Vec<ConfigProblem> = Vec::new();
    let mut set_aside: Vec<String> = Vec::new();
    loop {
        match parse_value::<T>(value.clone(), prefix) {
            Ok(v) if problems.is_empty() => return Ok(v),
            Ok(_) => return Err(problems),
            Err(p) => {
                // A required key set aside is missing now: no news.
                if set_aside
                    .iter()
                    .any(|k| p.message.contains(&format!("missing field `{k}`")))
                {
                    return Err(problems);
                }
                let key = p
                    .key
                    .strip_prefix(prefix)
                    .and_then(|k| k.strip_prefix('.'))
                    .and_then(|k| k.split(['.', '[']).next())
                    .map(str::to_string);
                problems.push(p);
                let removed = match (&mut value, key) {
                    (toml::Value::Table(t), Some(k)) => t.remove(&k).map(|_| k),
                    _ => None,
                };
                match removed {
                    Some(k) => set_aside.push(k),
                    None => return Err(problems),
                }
            }
        }
    }
}

/// Deserialises a TOML value, naming the failing key under `prefix`.
pub fn parse_value<T: DeserializeOwned>(
    value: toml::Value,
    prefix: &str,
) -> Result<T, ConfigProblem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." || path.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{path}")
        };
        let message = e.into_inner().to_string();
        let message = message.lines().next().unwrap_or_default().to_string();
        ConfigProblem::new(key, message)
    })
}

/// `"1.5 GiB"` → `("1.5", "GiB")`: the leading number and the unit after it.
fn number_and_unit(s: &str) -> (&str, &str) {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    (t[..split].trim(), t[split..].trim())
}

/// A duration, written `30s`, `500ms`, `2m`, `1h` or a number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Seconds(pub std::time::Duration);

impl FromStr for Seconds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (num, unit) = number_and_unit(s);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("expected a duration like \"30s\" or \"500ms\", found {s:?}"))?;
        let mult = match unit {
            "" | "s" => 1.0,
            "ms" => 1e-3,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            u => {
                return Err(format!(
                    "unknown unit {u:?} in {s:?}, expected ms, s, m or h"
                ))
            }
        };
        std::time::Duration::try_from_secs_f64(n * mult)
            .map(Seconds)
            .map_err(|_| format!("duration out of range: {s:?}"))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a duration: seconds or a string like \"30s\"")
        })? {
            Raw::N(n) => std::time::Duration::try_from_secs_f64(n)
                .map(Seconds)
                .map_err(|_| {
                    serde::de::Error::custom(format!("expected 0 or more seconds, found {n}"))
                }),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Seconds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0.as_secs_f64())
    }
}

/// A size in bytes, written `256MiB`, `64 MB`, `1GiB` or `1048576`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// As usize.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (num, unit) = number_and_unit(s);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("expected a size like \"256MiB\" or \"64 MB\", found {s:?}"))?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "kb" => 1000,
            "m" | "mib" => 1 << 20,
            "mb" => 1_000_000,
            "g" | "gib" => 1 << 30,
            "gb" => 1_000_000_000,
            "t" | "tib" => 1 << 40,
            "tb" => 1_000_000_000_000,
            _ => {
                return Err(format!(
                "unknown unit {unit:?} in {s:?}, expected B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
            ))
            }
        };
        let bytes = n * mult as f64;
        if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
            return Err(format!("size out of range: {s:?}"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        let units = [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (m, u) in units {
            if self.0 >= m {
                return write!(f, "{:.1} {u}", b / m as f64);
            }
        }
        write!(f, "{} B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a size: a number of bytes or a string like \"256MiB\"",
            )
        })? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [input]
        path = "data/in.jsonl"
        [output]
        path = "out"
        [model]
        backend = "echo"
    "#;

    #[test]
    fn defaults_and_relative_paths() {
        let c = JobConfig::from_toml(GOOD, Path::new("/cfg")).unwrap();
        assert_eq!(c.input.path, Path::new("/cfg/data/in.jsonl"));
        assert_eq!(c.batch.size, 256);
        assert_eq!(c.batch.compute, Compute::Actors);
        assert_eq!(c.memory.object_store, ByteSize(256 << 20));
        assert!(c.output.preserve_order);
        assert_eq!(c.batch.window(), 6);
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let text = r#"
            [input]
            path = "x"
            [output]
            path = "o"
            preserve_ordr = true
            [model]
            backend = "echo"
            [batch]
            size = 0
            num_actors = "two"
            [memory]
            object_store = "12 parsecs"
            [extra]
        "#;
        let p = JobConfig::from_toml(text, Path::new(".")).unwrap_err();
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"extra"), "{p:?}");
        assert!(keys.contains(&"output.preserve_ordr"), "{p:?}");
        assert!(
            p.iter().any(|p| p.message.contains("preserve_ordr")),
            "{p:?}"
        );
        assert!(keys.contains(&"batch.num_actors"), "{p:?}");
        assert!(keys.contains(&"memory.object_store"), "{p:?}");
        assert!(p.iter().any(|p| p.message.contains("parsecs")), "{p:?}");
    }

    #[test]
    fn absurd_values_several_bad_keys_in_one_section_are_all_reported() {
        let text = "[input]\npath = \"x\"\nmax_line_bytes = \"lots\"\ncolumn = 1\n[output]\npath = \"o\"\n\
                    [model]\nbackend = \"echo\"\n[batch]\nsize = \"big\"\nnum_actors = \"two\"\nbogus = 1\n";
        let p = JobConfig::from_toml(text, Path::new(".")).unwrap_err();
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "input.max_line_bytes",
            "input.column",
            "batch.size",
            "batch.num_actors",
            "batch.bogus",
        ] {
            assert!(keys.contains(&k), "{k} not in {p:?}");
        }
        // A required key of the wrong type is one problem, not two.
        let p = JobConfig::from_toml(
            "[input]\npath = 5\n[output]\npath = \"o\"\n[model]\nbackend = \"echo\"\n",
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "input.path");
    }

    #[test]
    fn semantic_checks_and_missing_sections() {
        let text = "[input]\npath = \"x\"\n[batch]\nsize = 0\nnum_gpus_per_actor = -1\n";
        let p = JobConfig::from_toml(text, Path::new(".")).unwrap_err();
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        for k in ["output", "model", "batch.size", "batch.num_gpus_per_actor"] {
            assert!(keys.contains(&k), "{k} not in {p:?}");
        }
        let p = JobConfig::from_toml("[input\n", Path::new(".")).unwrap_err();
        assert!(p[0].message.starts_with("line 1: invalid TOML"), "{p:?}");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!("256MiB".parse::<ByteSize>().unwrap(), ByteSize(256 << 20));
        assert_eq!("64 MB".parse::<ByteSize>().unwrap(), ByteSize(64_000_000));
        assert_eq!("1.5 KiB".parse::<ByteSize>().unwrap(), ByteSize(1536));
        assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("-1MiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(64 << 20).to_string(), "64.0 MiB");
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!("30s".parse::<Seconds>().unwrap().0, Duration::from_secs(30));
        assert_eq!(
            "500ms".parse::<Seconds>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!("2m".parse::<Seconds>().unwrap().0, Duration::from_secs(120));
        assert!("5 fortnights".parse::<Seconds>().is_err());
        let text = "[input]\npath = \"x\"\n[output]\npath = \"o\"\n[model]\nbackend = \"echo\"\n[batch]\ntimeout = 1.5\n";
        let c = JobConfig::from_toml(text, Path::new(".")).unwrap();
        assert_eq!(c.batch.timeout, Some(Seconds(Duration::from_millis(1500))));
    }
}
