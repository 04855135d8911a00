//! `stook bench checkpoint`: what shard commits cost, and the work a stop
//! at a random moment loses.

use std::path::{Path, PathBuf};

use super::{echo_config, generate_rows, work_dir};
use stook::registry::BackendRegistry;
use stook::runner::{Job, RunControl};

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
    let (dir, _guard) = work_dir(&args.dir)?;
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
            stook::config::CheckpointConfig::default().shard_rows,
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
        let manifest = stook_actors::checkpoint::Manifest::read(
            &dir.join("stops"),
            stook_actors::checkpoint::MANIFEST,
        )?
        .ok_or("no manifest")?;
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
