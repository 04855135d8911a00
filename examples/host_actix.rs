//! stook inside a host's own actix System: a backend defined here, two
//! jobs at once, progress events, one job cancelled midway and resumed,
//! both outputs checked.
//!
//! ```sh
//! cargo run --example host_actix
//! ```

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use stook::config::ConfigProblem;
use stook::{
    Backend, BackendOptions, BackendRegistry, Device, Job, JobConfig, Model, ModelError,
    ProgressEvent, RequestBatch, RequestSchema, ResultWriter, RunControl,
};

/// The host's own model: `{"id": …, "text": "…"}` → `{"id": …, "shout": "…"}`,
/// the text in capitals; `batch_ms` makes each batch take that long.
struct Shout {
    batch: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShoutOptions {
    #[serde(default)]
    batch_ms: u64,
}

impl Backend for Shout {
    fn schema(&self) -> RequestSchema {
        RequestSchema::text_with_id("text", "id")
    }

    fn result_bytes_bound(&self, rows: usize, input_bytes: usize) -> usize {
        // Upper case may triple a character's bytes; JSON escapes double them.
        6 * input_bytes + 32 * rows
    }

    fn load(&self, _device: &Device) -> Result<Arc<dyn Model>, ModelError> {
        Ok(Arc::new(ShoutModel { batch: self.batch }))
    }
}

struct ShoutModel {
    batch: Duration,
}

impl Model for ShoutModel {
    fn predict(&self, batch: &RequestBatch, out: &mut ResultWriter) -> Result<(), ModelError> {
        std::thread::sleep(self.batch);
        for i in 0..batch.len() {
            let text = batch.field(0, i).unwrap_or_default().to_uppercase();
            let id = batch.field(1, i).unwrap_or("null");
            let shout = serde_json::to_string(&text).map_err(|e| ModelError::new(e.to_string()))?;
            out.push(batch.row(i), &format!("{{\"id\":{id},\"shout\":{shout}}}"));
        }
        Ok(())
    }
}

/// The built-in backends and `shout`, which configs name like any other.
fn registry() -> BackendRegistry {
    let mut r = BackendRegistry::with_builtins();
    r.register(
        "shout",
        "the text in capitals (an example backend)",
        |options: &BackendOptions| -> Result<Arc<dyn Backend>, Vec<ConfigProblem>> {
            let o: ShoutOptions = options.parse()?;
            Ok(Arc::new(Shout {
                batch: Duration::from_millis(o.batch_ms),
            }))
        },
    );
    r
}

fn write_input(path: &Path, rows: usize) -> std::io::Result<()> {
    let text: String = (0..rows)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"id": i, "text": format!("row {i}: ünïcödé")})
            )
        })
        .collect();
    std::fs::write(path, text)
}

/// A job built in code: the same struct a TOML file deserialises into.
fn job(dir: &Path, name: &str, batch_ms: u64) -> Result<Job, Box<dyn Error>> {
    let mut config = JobConfig::new(dir.join(format!("{name}.jsonl")), dir.join(name), "shout");
    config
        .model
        .options
        .insert("batch_ms".into(), (batch_ms as i64).into());
    config.batch.size = 100;
    config.checkpoint.shard_rows = 1_000;
    config.memory.object_store = stook::ByteSize(8 << 20);
    Ok(Job::new(config, &registry(), Path::new(name))?)
}

/// Every output line is its input row in capitals, in order.
fn check(dir: &Path, name: &str, rows: usize) -> Result<(), Box<dyn Error>> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir.join(name))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    parts.retain(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
    });
    parts.sort();
    let mut n = 0;
    for p in parts {
        for line in std::fs::read_to_string(p)?.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let expect = format!("ROW {n}: ÜNÏCÖDÉ");
            if v["id"] != n || v["shout"] != expect.as_str() {
                return Err(format!("{name}: line {n} is {line}").into());
            }
            n += 1;
        }
    }
    if n != rows {
        return Err(format!("{name}: {n} rows, expected {rows}").into());
    }
    println!("{name}: {rows} rows checked");
    Ok(())
}

async fn host() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let rows = 20_000;
    write_input(&dir.path().join("fast.jsonl"), rows)?;
    write_input(&dir.path().join("slow.jsonl"), rows)?;

    // Two jobs at once, each with its own store and budget.
    let mut fast = job(dir.path(), "fast", 0)?.start(RunControl::default());
    let mut slow = job(dir.path(), "slow", 10)?.start(RunControl::default());

    // The fast job's progress, printed as it comes.
    let mut events = fast.events().ok_or("events taken")?;
    let printer = actix_rt::spawn(async move {
        while let Some(e) = events.recv().await {
            if let ProgressEvent::Progress {
                snapshot,
                rows_per_second,
            } = e
            {
                println!(
                    "fast: {}/{} rows, {rows_per_second:.0} rows/s, store {} B",
                    snapshot.rows_done, snapshot.rows_total, snapshot.store_live
                );
            }
        }
    });

    // The slow one is cancelled once it has committed three shards.
    let mut slow_events = slow.events().ok_or("events taken")?;
    let mut committed = 0;
    while let Some(e) = slow_events.recv().await {
        if let ProgressEvent::ShardCommitted { shard, rows, .. } = e {
            println!("slow: shard {shard} committed ({rows} rows)");
            committed += 1;
            if committed == 3 {
                slow.cancel();
                break;
            }
        }
    }
    let report = fast.wait().await?;
    println!(
        "fast: done, {} rows in {:.2} s",
        report.rows, report.wall_seconds
    );
    printer.await?;
    match slow.wait().await {
        Err(e) if e.is_cancelled() => println!("slow: cancelled midway"),
        other => return Err(format!("slow: expected a cancel, got {other:?}").into()),
    }

    // The same job again resumes from its committed shards (the same
    // options too: a changed one would be refused, naming it).
    let report = job(dir.path(), "slow", 10)?
        .start(RunControl::default())
        .wait()
        .await?;
    println!(
        "slow: resumed, {} rows of which {} from the cancelled run",
        report.rows, report.rows_resumed
    );
    if report.rows_resumed < 3_000 {
        return Err("slow: the resumed run redid committed shards".into());
    }
    check(dir.path(), "fast", rows)?;
    check(dir.path(), "slow", rows)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    actix::System::new().block_on(host())
}

#[test]
fn the_example_runs() {
    main().unwrap();
}
