//! `stook bench backpressure`: the real pipeline under a fast source and a
//! slow model, within a memory budget. It samples the store and the
//! process every few milliseconds and prints, per run: rows/s, peak store
//! bytes, peak RSS, next-batch latency and the most objects pinned; it
//! writes the samples and the table as JSON and a picture of memory over
//! time (SVG) per run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plotters::prelude::*;
use serde::Serialize;

use super::generate_rows;
use stook::config::{BatchConfig, ByteSize, JobConfig};
use stook::registry::BackendRegistry;
use stook::report::rss_bytes;
use stook::runner::{Job, RunControl};

/// Options of `stook bench backpressure`.
#[derive(Clone, Debug, clap::Args)]
pub struct BackpressureBench {
    /// Input sizes to generate, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100MB,1GB")]
    pub sizes: Vec<ByteSize>,
    /// Bytes per row.
    #[arg(long, default_value_t = 1024)]
    pub row_bytes: usize,
    /// The object store budget.
    #[arg(long, default_value = "64MiB")]
    pub budget: ByteSize,
    /// Rows per batch.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Actors.
    #[arg(long, default_value_t = 2)]
    pub num_actors: usize,
    /// The model's cost per row (it sleeps: a slow model that leaves the
    /// CPU to the source).
    #[arg(long, default_value_t = 10)]
    pub row_us: u64,
    /// The model's cost per batch.
    #[arg(long, default_value_t = 0)]
    pub batch_ms: u64,
    /// How many times slower the lagging actor is, in the lagging run.
    #[arg(long, default_value_t = 4.0)]
    pub lag: f64,
    /// Milliseconds between samples.
    #[arg(long, default_value_t = 5)]
    pub sample_ms: u64,
    /// Where inputs, outputs, results.json and the pictures go.
    #[arg(long, default_value = "bench-out/backpressure")]
    pub out: PathBuf,
    /// Internal: run one configuration (`SIZE:ORDER:LAG`) in this process.
    #[arg(long, hide = true)]
    pub single: Option<String>,
}

/// One sample of memory.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    /// Store bytes held by objects.
    pub live: u64,
    /// Store bytes reserved.
    pub reserved: u64,
    /// Objects in the store.
    pub objects: u64,
    /// Resident memory of the process.
    pub rss: u64,
    /// Rows finished.
    pub rows_done: u64,
}

/// One run's line of the table.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Row {
    /// The run's name.
    pub name: String,
    /// Input bytes.
    pub input_bytes: u64,
    /// The budget.
    pub budget: u64,
    /// Order preserved.
    pub preserve_order: bool,
    /// The lagging actor's factor (1: none).
    pub lag: f64,
    /// Rows.
    pub rows: u64,
    /// Rows per second.
    pub rows_per_second: f64,
    /// Peak live + reserved store bytes.
    pub peak_store_bytes: u64,
    /// Peak resident memory (the kernel's high-water mark for this run),
    /// with the run's worker processes' peak.
    pub peak_rss_bytes: u64,
    /// Next-batch wait of an idle actor, 50th percentile, ms.
    pub next_batch_p50_ms: f64,
    /// Next-batch wait of an idle actor, 99th percentile, ms.
    pub next_batch_p99_ms: f64,
    /// Most objects pinned at once.
    pub peak_objects: u64,
    /// Whether every row came out correct.
    pub output_correct: bool,
}

/// Resets the kernel's peak-RSS mark, so the run's peak excludes the
/// input generation before it.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// `stook bench backpressure`. Each run is its own process (this binary,
/// re-run with `--single`), so a run's peak RSS is its own and not what
/// earlier runs left behind.
pub fn backpressure(args: &BackpressureBench) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&args.out)?;
    if let Some(single) = &args.single {
        return single_run(args, single);
    }
    let largest = args.sizes.iter().copied().max().ok_or("no --sizes")?;
    let mut rows_out: Vec<Row> = Vec::new();
    for &size in &args.sizes {
        let rows = (size.0 as usize / args.row_bytes).max(1);
        let input = input_path(args, size);
        if std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0) == 0 {
            eprintln!(
                "generating {rows} rows of {} bytes ({size})",
                args.row_bytes
            );
            generate_rows(&input, rows, args.row_bytes)?;
        }
        let mut runs = vec![(true, 1.0), (false, 1.0)];
        if size == largest {
            runs.push((true, args.lag));
        }
        for (order, lag) in runs {
            let spec = format!("{}:{order}:{lag}", size.0);
            let status = std::process::Command::new(std::env::current_exe()?)
                .args(["bench", "backpressure", "--single", &spec])
                .args(["--row-bytes", &args.row_bytes.to_string()])
                .args(["--budget", &args.budget.0.to_string()])
                .args(["--batch-size", &args.batch_size.to_string()])
                .args(["--num-actors", &args.num_actors.to_string()])
                .args(["--row-us", &args.row_us.to_string()])
                .args(["--batch-ms", &args.batch_ms.to_string()])
                .args(["--sample-ms", &args.sample_ms.to_string()])
                .arg("--out")
                .arg(&args.out)
                .status()?;
            if !status.success() {
                return Err(format!("the run {spec} failed").into());
            }
            let row: Row = serde_json::from_slice(&std::fs::read(
                args.out
                    .join(format!("row-{}.json", run_name(size, order, lag))),
            )?)?;
            eprintln!(
                "{}: {:.0} rows/s, peak store {}",
                row.name,
                row.rows_per_second,
                ByteSize(row.peak_store_bytes)
            );
            rows_out.push(row);
        }
    }
    println!("| input | budget | order | lag | rows | rows/s | peak store bytes | peak RSS | next-batch latency p50 / p99 | pinned objects peak | correct |");
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for r in &rows_out {
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {} ({}) | {} | {:.2} / {:.2} ms | {} | {} |",
            ByteSize(r.input_bytes),
            ByteSize(r.budget),
            if r.preserve_order { "on" } else { "off" },
            r.lag,
            r.rows,
            r.rows_per_second,
            r.peak_store_bytes,
            ByteSize(r.peak_store_bytes),
            ByteSize(r.peak_rss_bytes),
            r.next_batch_p50_ms,
            r.next_batch_p99_ms,
            r.peak_objects,
            if r.output_correct { "yes" } else { "NO" },
        );
    }
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&rows_out)?,
    )?;
    if rows_out
        .iter()
        .any(|r| r.peak_store_bytes > r.budget || !r.output_correct)
    {
        return Err("a run exceeded its budget or wrote wrong output".into());
    }
    Ok(())
}

fn input_path(args: &BackpressureBench, size: ByteSize) -> PathBuf {
    args.out
        .join(format!("input-{}x{}.jsonl", size.0, args.row_bytes))
}

fn run_name(size: ByteSize, order: bool, lag: f64) -> String {
    format!(
        "{size} order={} {}",
        if order { "on" } else { "off" },
        if lag > 1.0 {
            format!("lagging actor x{lag}")
        } else {
            "no lag".into()
        }
    )
    .replace(' ', "_")
}

/// One run in this process: writes `row-NAME.json`, `samples-NAME.json`
/// and `memory-NAME.svg`.
fn single_run(args: &BackpressureBench, spec: &str) -> Result<(), Box<dyn std::error::Error>> {
    let bad = || format!("--single takes SIZE:ORDER:LAG, found {spec:?}");
    let mut it = spec.split(':');
    let size = ByteSize(it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?);
    let order: bool = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let lag: f64 = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let rows = (size.0 as usize / args.row_bytes).max(1);
    let name = run_name(size, order, lag);
    let registry = BackendRegistry::with_builtins();
    let (row, samples) = one_run(
        args,
        &registry,
        &input_path(args, size),
        size,
        rows,
        order,
        lag,
        &name,
    )?;
    plot(
        &args.out.join(format!("memory-{name}.svg")),
        &name,
        &samples,
        args.budget.0,
    )?;
    std::fs::write(
        args.out.join(format!("samples-{name}.json")),
        serde_json::to_vec(&samples)?,
    )?;
    std::fs::write(
        args.out.join(format!("row-{name}.json")),
        serde_json::to_vec(&row)?,
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    args: &BackpressureBench,
    registry: &BackendRegistry,
    input: &Path,
    size: ByteSize,
    rows: usize,
    order: bool,
    lag: f64,
    name: &str,
) -> Result<(Row, Vec<Sample>), Box<dyn std::error::Error>> {
    let out = args.out.join(name);
    let mut cfg = super::echo_config(input, &out, args.batch_size, args.num_actors, order);
    cfg.model.backend = "synthetic".into();
    cfg.model.options = toml::from_str(&format!(
        "row_us = {}\nbatch_ms = {}\nlag_factor = {lag}\noutput_bytes = 64",
        args.row_us, args.batch_ms
    ))?;
    cfg.batch = BatchConfig {
        size: args.batch_size,
        num_actors: args.num_actors,
        ..BatchConfig::default()
    };
    cfg.memory.object_store = args.budget;
    let job = Job::new(cfg.clone(), registry, Path::new("bench"))?;
    let control = RunControl {
        fresh: true,
        ..RunControl::default()
    };
    let progress = control.progress.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, period) = (stop.clone(), Duration::from_millis(args.sample_ms));
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let s = progress.snapshot();
                samples.push(Sample {
                    t: start.elapsed().as_secs_f64(),
                    live: s.store_live,
                    reserved: s.store_reserved,
                    objects: s.store_objects,
                    rss: rss_bytes(),
                    rows_done: s.rows_done,
                });
                std::thread::sleep(period);
            }
            samples
        })
    };
    reset_peak_rss();
    let progress = control.progress.clone();
    let result = job.run_blocking(control);
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.join().map_err(|_| "sampler panicked")?;
    let report = result?;
    let (p50, p99) = progress.wait_percentiles().unwrap_or_default();
    Ok((
        Row {
            name: name.to_string(),
            input_bytes: size.0,
            budget: args.budget.0,
            preserve_order: order,
            lag,
            rows: report.rows,
            rows_per_second: report.rows_per_second,
            peak_store_bytes: report.peak_store_bytes,
            // stook's own and its worker processes' (a python backend's).
            peak_rss_bytes: report.peak_rss_bytes + report.peak_workers_rss_bytes,
            next_batch_p50_ms: p50.as_secs_f64() * 1e3,
            next_batch_p99_ms: p99.as_secs_f64() * 1e3,
            peak_objects: report.peak_store_objects,
            output_correct: check_output(&cfg, rows)?,
        },
        samples,
    ))
}

/// Every row once: row numbers 0..rows (order off) or ids in order (on).
fn check_output(cfg: &JobConfig, rows: usize) -> std::io::Result<bool> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(&cfg.output.path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        })
        .collect();
    parts.sort();
    let mut seen = vec![false; rows];
    let mut next = 0usize;
    for p in parts {
        for line in std::fs::read_to_string(p)?.lines() {
            let v: serde_json::Value = serde_json::from_str(line).map_err(std::io::Error::other)?;
            let i = if cfg.output.preserve_order {
                let id = v["id"].as_u64().unwrap_or(u64::MAX) as usize;
                if id != next {
                    return Ok(false);
                }
                next += 1;
                id
            } else {
                v["_row"].as_u64().unwrap_or(u64::MAX) as usize
            };
            match seen.get_mut(i) {
                Some(s) if !*s => *s = true,
                _ => return Ok(false),
            }
        }
    }
    Ok(seen.iter().all(|s| *s))
}

/// Two panels against time: the store (live, reserved, both) on its own
/// scale, with its budget in the caption, and the process's RSS.
fn plot(
    path: &Path,
    title: &str,
    samples: &[Sample],
    budget: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let tmax = samples.last().map_or(1.0, |s| s.t).max(1e-3);
    let root = SVGBackend::new(path, (900, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(310);
    let peak = samples
        .iter()
        .map(|s| s.live + s.reserved)
        .max()
        .unwrap_or(0);
    type Series<'a> = (&'a str, RGBColor, Box<dyn Fn(&Sample) -> f64>);
    let panels: [(_, String, Vec<Series>); 2] = [
        (
            top,
            format!(
                "{}: object store (budget {:.0} MiB, peak {:.2} MiB)",
                title.replace('_', " "),
                mib(budget),
                mib(peak)
            ),
            vec![
                ("store live", BLUE, Box::new(move |s: &Sample| mib(s.live))),
                (
                    "store reserved",
                    RGBColor(230, 120, 0),
                    Box::new(move |s: &Sample| mib(s.reserved)),
                ),
                (
                    "live + reserved",
                    RGBColor(0, 150, 0),
                    Box::new(move |s: &Sample| mib(s.live + s.reserved)),
                ),
            ],
        ),
        (
            bottom,
            "process resident memory (RSS)".to_string(),
            vec![("process RSS", RED, Box::new(move |s: &Sample| mib(s.rss)))],
        ),
    ];
    for (area, caption, series) in panels {
        let ymax = samples
            .iter()
            .flat_map(|s| series.iter().map(move |(_, _, f)| f(s)))
            .fold(0.1f64, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(&area)
            .caption(caption, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..tmax, 0f64..ymax)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("MiB")
            .draw()?;
        for (label, color, f) in series {
            chart
                .draw_series(LineSeries::new(
                    samples.iter().map(|s| (s.t, f(s))),
                    color.stroke_width(2),
                ))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
