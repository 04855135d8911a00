//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod openai;
pub mod s3;

use std::io::Write;
use std::path::{Path, PathBuf};

use stook::config::{Compute, JobConfig};
use stook::{BackendRegistry, ByteSize, Job, RunControl, RunError, RunReport};

/// A fresh temporary directory, removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Writes `n` rows `{"id": i, "text": "..."}` of varied lengths, with some
/// non-ASCII text, and returns the path.
pub fn write_rows(dir: &Path, name: &str, n: usize) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in 0..n {
        let text = format!("row {i} {} é ✓", "word ".repeat(i % 17));
        writeln!(f, "{}", serde_json::json!({"id": i, "text": text})).unwrap();
    }
    f.flush().unwrap();
    path
}

/// FNV-1a 64, as the synthetic backend documents its digest.
pub fn fnv1a(text: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A synthetic-backend job over `input`.
pub fn synthetic_config(input: &Path, output: &Path, options: &str) -> JobConfig {
    let mut c = JobConfig::new(input, output, "synthetic");
    c.model.options = toml::from_str(options).unwrap();
    c
}

/// Sets the batching knobs.
pub fn with_batching(
    mut c: JobConfig,
    size: usize,
    compute: Compute,
    actors: usize,
    budget: u64,
) -> JobConfig {
    c.batch.size = size;
    c.batch.compute = compute;
    c.batch.num_actors = actors;
    c.memory.object_store = ByteSize(budget);
    c
}

/// Runs a job with the built-in backends. Every successful run is held to
/// the store's invariants: peak live + reserved within the budget, nothing
/// left in the store.
pub fn run(config: JobConfig) -> Result<RunReport, RunError> {
    let job = Job::new(
        config,
        &BackendRegistry::with_builtins(),
        Path::new("test.toml"),
    )?;
    let report = job.run_blocking(RunControl::default())?;
    assert!(
        report.peak_store_bytes <= report.store_budget_bytes,
        "peak store {} > budget {}",
        report.peak_store_bytes,
        report.store_budget_bytes
    );
    assert_eq!(report.leaked_store_objects, 0);
    Ok(report)
}

/// The concatenation of the part files, in name order.
pub fn output_bytes(dir: &Path) -> Vec<u8> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("part-")
        })
        .collect();
    parts.sort();
    parts
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// The `"id"` of each JSON line of `text`, as an integer.
pub fn ids(text: &str) -> Vec<u64> {
    text.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("no integer id in {l}"))
        })
        .collect()
}

/// Files whose names start with `.` (temporaries) in `dir`, but the
/// workers' lock files, which stay.
pub fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.') && !n.ends_with(".lock"))
        .collect()
}

/// Checks that output line k answers input row k of `write_rows`.
pub fn assert_synthetic_rows(out: &[u8], n: usize) {
    let text = std::str::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), n, "row count");
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["id"], i, "row {i}: {line}");
        let expect = format!("row {i} {} é ✓", "word ".repeat(i % 17));
        assert_eq!(v["digest"], format!("{:016x}", fnv1a(&expect)), "row {i}");
    }
}

/// The stook binary built for these tests.
pub fn stook_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stook"))
}

/// Entries of a directory (threads in /proc/self/task, say).
pub fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Names in /dev/shm.
pub fn shm_entries() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}
