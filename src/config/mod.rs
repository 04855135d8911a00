//! The job config: typed, `deny_unknown_fields`, read once, and checked in
//! one pass that reports every problem with its TOML key.
//!
//! Relative paths are resolved against the config file's directory, so a
//! config means the same thing from any working directory.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use stook_actors::input::InputFormat;
use stook_actors::parts::OutputFormat;

mod load;
mod problems;
mod units;

pub use problems::{parse_value, parse_value_all, ConfigErrors, ConfigProblem};
pub use units::{ByteSize, Seconds};

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
    /// A directory: part files, manifest, errors, report; or a prefix in
    /// object storage (`s3://bucket/out`, `gs://…`, `az://…`).
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
    /// Where parts are written before they are uploaded, when `path` is in
    /// object storage (default: a directory in the system's temporary
    /// directory named after the URL and the worker).
    #[serde(default)]
    pub staging: Option<PathBuf>,
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
            staging: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
