//! Whole-pipeline benchmarks that print figures. Timings are compared as
//! ratios measured in the same run, never against fixed numbers.
//!
//! - [`pipeline`]: the echo pipeline against a plain serde_json loop;
//! - [`checkpoint`]: what shard commits cost, and the work a stop loses;
//! - [`backpressure`]: a fast source over a slow model within a budget;
//! - [`stages`]: the embedding backend's stages alone (forward, tokenizer, writer);
//! - [`kernels`]: the packed encoder's ops on a GPU against their CPU versions.

pub mod backpressure;
pub mod checkpoint;
#[cfg(feature = "embedding")]
pub mod kernels;
pub mod pipeline;
#[cfg(feature = "embedding")]
pub mod stages;

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub use backpressure::{backpressure, BackpressureBench};
pub use checkpoint::{checkpoint, CheckpointBench};
#[cfg(feature = "embedding")]
pub use kernels::{kernels, KernelsBench};
pub use pipeline::{pipeline, PipelineBench};
#[cfg(feature = "embedding")]
pub use stages::{stages, StagesBench};

use stook::config::{Compute, JobConfig};

/// Writes `rows` rows of about `row_bytes` bytes as compact JSON with keys
/// in sorted order (so a parse-and-write loop reproduces each line exactly).
pub fn generate_rows(path: &Path, rows: usize, row_bytes: usize) -> std::io::Result<u64> {
    const WORDS: [&str; 16] = [
        "river", "stone", "amber", "quiet", "north", "lantern", "orchard", "copper", "delta",
        "ember", "fable", "harbor", "island", "juniper", "meadow", "nimbus",
    ];
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut line = String::new();
    let mut total = 0u64;
    for i in 0..rows {
        line.clear();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let _ = write!(
            line,
            "{{\"id\":{i},\"score\":{},\"tags\":[\"t{}\",\"u{}\"],\"text\":\"",
            (seed % 10_000) as f64 / 100.0,
            seed % 7,
            seed % 5
        );
        let mut s = seed;
        while line.len() + 2 < row_bytes {
            line.push_str(WORDS[(s % 16) as usize]);
            line.push(' ');
            s = s.rotate_left(5) ^ 0x9e37;
        }
        line.push_str("end\"}\n");
        out.write_all(line.as_bytes())?;
        total += line.len() as u64;
    }
    out.flush()?;
    Ok(total)
}

/// A `--device` argument: `cpu` or `cuda:N` (read as `batch.device` is).
#[cfg(feature = "embedding")]
pub fn device_arg(d: &str) -> Result<stook_actors::Device, String> {
    use stook::config::DeviceChoice;
    match DeviceChoice::try_from(d.to_owned()) {
        Ok(DeviceChoice::Cpu) => Ok(stook_actors::Device::Cpu),
        Ok(DeviceChoice::CudaIndex(i)) => Ok(stook_actors::Device::Cuda(i)),
        _ => Err(format!("--device: expected cpu or cuda:N, found {d:?}")),
    }
}

/// A job config for the echo backend over `input`.
pub fn echo_config(
    input: &Path,
    output: &Path,
    batch_size: usize,
    num_actors: usize,
    preserve_order: bool,
) -> JobConfig {
    let mut c = JobConfig::new(input, output, "echo");
    c.output.preserve_order = preserve_order;
    c.batch.size = batch_size;
    c.batch.compute = Compute::Actors;
    c.batch.num_actors = num_actors;
    c
}

/// The benchmark's working directory: `dir`, or a temporary one kept
/// alive by the returned guard.
pub fn work_dir(dir: &Option<PathBuf>) -> std::io::Result<(PathBuf, Option<TempDir>)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            Ok((d.clone(), None))
        }
        None => {
            let t = TempDir::new()?;
            Ok((t.0.clone(), Some(t)))
        }
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Makes a fresh directory under the system's temporary directory.
    pub fn new() -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!("stook-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
