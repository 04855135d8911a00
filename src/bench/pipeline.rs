//! `stook bench pipeline`: the echo pipeline against a plain serde_json
//! loop over the same file, in the same run.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{echo_config, generate_rows, work_dir};
use stook::registry::BackendRegistry;
use stook::runner::{Job, RunControl};

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

/// `stook bench pipeline`: prints stook's rows/s beside the serde_json floor.
pub fn pipeline(args: &PipelineBench) -> Result<(), Box<dyn std::error::Error>> {
    let (dir, _guard) = work_dir(&args.dir)?;
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
    // Order on and off; and order on without per-holder accounting, to
    // show what the accounting costs (same run, side by side).
    for (order, holders) in [(true, true), (false, true), (true, false)] {
        let out = dir.join(format!("stook-{order}-{holders}"));
        let mut cfg = echo_config(&input, &out, args.batch_size, args.num_actors, order);
        cfg.memory.holder_accounting = holders;
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
            "stook echo, preserve_order = {order}, {} actors, batch {}{}",
            args.num_actors,
            args.batch_size,
            if holders {
                ""
            } else {
                ", holder accounting off"
            }
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
