//! Whole-pipeline benchmarks that print figures. Timings are compared as
//! ratios measured in the same run, never against fixed numbers.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::{
    BatchConfig, CheckpointConfig, Compute, InputConfig, JobConfig, MemoryConfig, ModelConfig,
    OutputConfig,
};
use crate::registry::BackendRegistry;
use crate::runner::{Job, RunControl};

/// Options of `stook bench pipeline`.
#[derive(Clone, Debug, clap::Args)]
pub struct PipelineBench {
    /// Rows to generate.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Approximate bytes per row.
    #[arg(long, default_value_t = 200)]
    pub row_bytes: usize,
    /// Rows per batch.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Actors.
    #[arg(long, default_value_t = 2)]
    pub num_actors: usize,
    /// Working directory (input, outputs, results.json); a temporary one if unset.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

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

/// The floor: parse every line with serde_json and write it back, one thread.
pub fn serde_loop(input: &Path, output: &Path) -> std::io::Result<u64> {
    let data = std::fs::read(input)?;
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(output)?);
    let mut rows = 0;
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).map_err(std::io::Error::other)?;
        serde_json::to_writer(&mut out, &v).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
        rows += 1;
    }
    out.flush()?;
    Ok(rows)
}

fn concat_parts(dir: &Path, parts: &[String]) -> std::io::Result<Vec<u8>> {
    let mut all = Vec::new();
    for p in parts {
        all.extend(std::fs::read(dir.join(p))?);
    }
    Ok(all)
}

/// A job config for the echo backend over `input`.
pub fn echo_config(
    input: &Path,
    output: &Path,
    batch_size: usize,
    num_actors: usize,
    preserve_order: bool,
) -> JobConfig {
    JobConfig {
        input: InputConfig {
            path: input.to_path_buf(),
            max_line_bytes: crate::ByteSize(16 << 20),
        },
        output: OutputConfig {
            path: output.to_path_buf(),
            preserve_order,
            assemble: None,
        },
        model: ModelConfig {
            backend: "echo".into(),
            options: toml::Table::new(),
        },
        batch: BatchConfig {
            size: batch_size,
            compute: Compute::Actors,
            num_actors,
            ..BatchConfig::default()
        },
        memory: MemoryConfig::default(),
        checkpoint: CheckpointConfig::default(),
    }
}

/// `stook bench pipeline`: prints stook's rows/s beside the serde_json floor.
pub fn pipeline(args: &PipelineBench) -> Result<(), Box<dyn std::error::Error>> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let input = dir.join("input.jsonl");
    let bytes = generate_rows(&input, args.rows, args.row_bytes)?;
    eprintln!("input: {} rows, {:.1} MB", args.rows, bytes as f64 / 1e6);

    let floor_out = dir.join("floor.jsonl");
    let t = Instant::now();
    serde_loop(&input, &floor_out)?;
    let floor_secs = t.elapsed().as_secs_f64();
    let expected = std::fs::read(&floor_out)?;

    let registry = BackendRegistry::with_builtins();
    let mut table = vec![("serde_json loop (1 thread)".to_string(), floor_secs, true)];
    let mut json_rows =
        vec![serde_json::json!({"system": "serde_json loop", "seconds": floor_secs})];
    for order in [true, false] {
        let out = dir.join(if order {
            "stook-ordered"
        } else {
            "stook-unordered"
        });
        let cfg = echo_config(&input, &out, args.batch_size, args.num_actors, order);
        let job = Job::new(cfg, &registry, Path::new("bench"))?;
        let report = job.run_blocking(RunControl {
            fresh: true,
            ..RunControl::default()
        })?;
        let same = if order {
            concat_parts(&out, &report.parts)? == expected
        } else {
            report.rows_written == args.rows as u64
        };
        let name = format!(
            "stook echo, preserve_order = {order}, {} actors, batch {}",
            args.num_actors, args.batch_size
        );
        table.push((name.clone(), report.wall_seconds, same));
        json_rows.push(serde_json::json!({
            "system": name, "seconds": report.wall_seconds, "output_matches": same,
            "peak_store_bytes": report.peak_store_bytes, "peak_rss_bytes": report.peak_rss_bytes,
        }));
    }
    println!("| system | rows/s | × floor | output correct |");
    println!("| --- | ---: | ---: | --- |");
    for (name, secs, same) in &table {
        println!(
            "| {name} | {:.0} | {:.2} | {} |",
            args.rows as f64 / secs,
            floor_secs / secs,
            if *same { "yes" } else { "NO" }
        );
    }
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({"rows": args.rows, "input_bytes": bytes, "runs": json_rows}),
        )?,
    )?;
    if table.iter().any(|(_, _, same)| !same) {
        return Err("stook's output differs from the floor's".into());
    }
    Ok(())
}

/// Options of `stook bench checkpoint`.
#[derive(Clone, Debug, clap::Args)]
pub struct CheckpointBench {
    /// Rows to generate.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Approximate bytes per row.
    #[arg(long, default_value_t = 200)]
    pub row_bytes: usize,
    /// Rows per shard in the checkpointed runs.
    #[arg(long, default_value_t = 10_000)]
    pub shard_rows: usize,
    /// Stops at random moments to measure the work lost.
    #[arg(long, default_value_t = 5)]
    pub stops: usize,
    /// Working directory; a temporary one if unset.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `stook bench checkpoint`: what shard commits cost (rows/s with many
/// commits against one at the end, same run), and how much computed work a
/// stop at a random moment loses (rows computed but not yet committed).
pub fn checkpoint(args: &CheckpointBench) -> Result<(), Box<dyn std::error::Error>> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let input = dir.join("input.jsonl");
    generate_rows(&input, args.rows, args.row_bytes)?;
    let registry = BackendRegistry::with_builtins();
    let job = |shard_rows: usize, name: &str| -> Result<Job, Box<dyn std::error::Error>> {
        let mut cfg = echo_config(&input, &dir.join(name), 256, 2, true);
        cfg.checkpoint.shard_rows = shard_rows;
        Ok(Job::new(cfg, &registry, Path::new("bench"))?)
    };
    let fresh = || RunControl {
        fresh: true,
        ..RunControl::default()
    };
    // Alternated, twice each, best of two: run order and warm-up cancel out.
    let settings = [
        ("one commit at the end", args.rows),
        (
            "default shard_rows",
            crate::config::CheckpointConfig::default().shard_rows,
        ),
        ("small shards", args.shard_rows),
    ];
    let mut rates: Vec<(&str, usize, u64, f64)> =
        settings.iter().map(|&(l, s)| (l, s, 0, 0.0)).collect();
    for _ in 0..2 {
        for (i, &(_, shard_rows)) in settings.iter().enumerate() {
            let r = job(shard_rows, "rate")?.run_blocking(fresh())?;
            rates[i].2 = r.shards;
            rates[i].3 = rates[i].3.max(r.rows_per_second);
        }
    }
    // Work lost: stop at random moments; what was computed but not
    // committed is what a kill at that moment would lose.
    let full_secs = args.rows as f64 / rates[2].3;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut lost = Vec::new();
    for _ in 0..args.stops {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = std::time::Duration::from_secs_f64(
            full_secs * (0.1 + 0.8 * (seed % 1000) as f64 / 1000.0),
        );
        let control = fresh();
        let (cancel, progress) = (control.cancel.clone(), control.progress.clone());
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(at);
            let done = progress.snapshot().rows_done;
            cancel.store(true, std::sync::atomic::Ordering::SeqCst);
            done
        });
        let j = job(args.shard_rows, "stops")?;
        let _ = j.run_blocking(control);
        let computed = stopper.join().map_err(|_| "stopper thread panicked")?;
        let manifest =
            stook_actors::checkpoint::Manifest::read(&dir.join("stops"))?.ok_or("no manifest")?;
        let committed: u64 = manifest.shards.iter().map(|s| s.rows).sum();
        lost.push(computed.saturating_sub(committed));
    }
    println!("| run | shard_rows | shards | rows/s | × one commit |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (label, shard_rows, shards, rate) in &rates {
        println!(
            "| {label} | {shard_rows} | {shards} | {rate:.0} | {:.2} |",
            rate / rates[0].3
        );
    }
    let max_lost = lost.iter().copied().max().unwrap_or(0);
    let mean_lost = lost.iter().sum::<u64>() as f64 / lost.len().max(1) as f64;
    println!(
        "\nwork lost to a stop at {} random moments: mean {mean_lost:.0} rows, max {max_lost} rows \
         (shard_rows = {}, so at most one open shard plus the batches in flight)",
        lost.len(),
        args.shard_rows
    );
    std::fs::write(
        dir.join("checkpoint.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "rows": args.rows,
            "runs": rates.iter().map(|(l, s, n, r)| serde_json::json!({"run": l, "shard_rows": s, "shards": n, "rows_per_second": r})).collect::<Vec<_>>(),
            "lost_rows": lost,
        }))?,
    )?;
    Ok(())
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
