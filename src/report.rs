//! The run report: printed as a summary, written as `_report.json`.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use stook_actors::messages::SinkSummary;
use stook_actors::{Device, ProgressSnapshot, StoreStats};

use crate::config::{ByteSize, JobConfig};
use crate::output::Totals;

/// What a run measured, for its report.
pub struct RunFacts<'a> {
    /// What the Sink wrote this run.
    pub sink: &'a SinkSummary,
    /// Totals over every committed shard.
    pub totals: &'a Totals,
    /// Rows committed by earlier runs.
    pub rows_resumed: u64,
    /// The run's counters.
    pub progress: ProgressSnapshot,
    /// The store at the end.
    pub store: &'a StoreStats,
    /// Wall time.
    pub wall: Duration,
    /// Peak resident memory.
    pub peak_rss_bytes: u64,
    /// Peak resident memory of the processes the run started.
    pub peak_workers_rss_bytes: u64,
    /// Each actor's device.
    pub devices: &'a [Device],
    /// Which slice of the job this run computed.
    pub worker: stook_actors::checkpoint::Worker,
}

/// What a finished run did.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The worker (`0/1`: the whole job in one process).
    pub worker: String,
    /// Input rows (non-blank lines), over every committed shard (of this
    /// worker's, in a split).
    pub rows: u64,
    /// Result rows, over every committed shard.
    pub rows_written: u64,
    /// Bad rows (in the errors file), over every committed shard.
    pub errors: u64,
    /// Rows this run computed (the rest were committed by earlier runs).
    pub rows_this_run: u64,
    /// Rows committed by earlier runs and skipped.
    pub rows_resumed: u64,
    /// Shards committed, in all.
    pub shards: u64,
    /// Blank lines skipped.
    pub blank_lines: u64,
    /// Wall time in seconds.
    pub wall_seconds: f64,
    /// Input rows per second of wall time.
    pub rows_per_second: f64,
    /// Peak live + reserved bytes in the object store.
    pub peak_store_bytes: u64,
    /// The object store's budget.
    pub store_budget_bytes: u64,
    /// Most objects held at once.
    pub peak_store_objects: u64,
    /// The most objects and bytes each stage pinned at once: source
    /// (encoded, not dispatched), in_flight, reorder (finished, waiting for
    /// order), sink (being written).
    pub peak_store_holders: std::collections::BTreeMap<String, stook_actors::store::HolderStats>,
    /// Objects and reservations still held when the run ended: 0, unless an
    /// actor was abandoned inside a model call past `batch.timeout`.
    pub leaked_store_objects: u64,
    /// Peak resident memory of the process.
    pub peak_rss_bytes: u64,
    /// Peak resident memory of the processes the run started (the
    /// `python` backend's workers), summed over them: their own memory
    /// (RssAnon + RssFile), not the object store's shared pages they map,
    /// which `peak_rss_bytes` counts already. 0 when there were none.
    pub peak_workers_rss_bytes: u64,
    /// Models loaded.
    pub model_loads: u64,
    /// `actors` or `tasks`.
    pub compute: crate::config::Compute,
    /// Actors (or workers).
    pub num_actors: usize,
    /// The device of each actor.
    pub devices: Vec<String>,
    /// Whether results are in input order.
    pub preserve_order: bool,
    /// Part files this run committed.
    pub parts: Vec<String>,
    /// Output bytes.
    pub bytes_written: u64,
    /// What the backend counted over the rows this run wrote (the
    /// embedding backend: `texts_truncated`, texts longer than its
    /// max_seq_length).
    pub counters: std::collections::BTreeMap<String, u64>,
}

impl RunReport {
    /// Gathers the report.
    pub fn new(cfg: &JobConfig, facts: RunFacts<'_>) -> Self {
        let RunFacts {
            sink,
            totals,
            rows_resumed,
            progress,
            store,
            wall,
            peak_rss_bytes,
            peak_workers_rss_bytes,
            devices,
            worker,
        } = facts;
        let secs = wall.as_secs_f64();
        let rows = sink.rows_written + sink.errors;
        RunReport {
            worker: worker.to_string(),
            rows: totals.rows,
            rows_written: totals.rows - totals.errors,
            errors: totals.errors,
            rows_this_run: rows,
            rows_resumed,
            shards: totals.shards,
            blank_lines: sink.blank_lines,
            wall_seconds: secs,
            rows_per_second: if secs > 0.0 { rows as f64 / secs } else { 0.0 },
            peak_store_bytes: store.peak,
            store_budget_bytes: store.budget,
            peak_store_objects: store.peak_objects,
            peak_store_holders: store.peak_holders.clone(),
            leaked_store_objects: store.objects + store.reservations,
            peak_rss_bytes,
            peak_workers_rss_bytes,
            model_loads: progress.model_loads,
            compute: cfg.batch.compute,
            num_actors: cfg.batch.num_actors,
            devices: devices.iter().map(|d| d.to_string()).collect(),
            preserve_order: cfg.output.preserve_order,
            parts: sink.parts.clone(),
            bytes_written: sink.bytes_written,
            counters: sink.counters.clone(),
        }
    }

    /// Writes the report as JSON.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_json())
    }

    /// The report as JSON text (a line).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// A short human summary.
    pub fn summary(&self, output: &Path) -> String {
        let resumed = if self.rows_resumed > 0 {
            format!(" ({} resumed from earlier runs)", self.rows_resumed)
        } else {
            String::new()
        };
        let worker = if self.worker == "0/1" {
            String::new()
        } else {
            format!("worker {}: ", self.worker)
        };
        let counters: String = self
            .counters
            .iter()
            .map(|(k, v)| format!(", {v} {}", k.replace('_', " ")))
            .collect();
        format!(
            "{worker}{} rows{resumed} → {} ({} shard{}): {} written, {} bad, {} blank lines skipped{counters}\n\
             wall {:.2} s, {:.0} rows/s, peak store {} of {}, peak RSS {}{}, {} model load{} on {}",
            self.rows,
            output.display(),
            self.shards,
            if self.shards == 1 { "" } else { "s" },
            self.rows_written,
            self.errors,
            self.blank_lines,
            self.wall_seconds,
            self.rows_per_second,
            ByteSize(self.peak_store_bytes),
            ByteSize(self.store_budget_bytes),
            ByteSize(self.peak_rss_bytes),
            match self.peak_workers_rss_bytes {
                0 => String::new(),
                w => format!(" (+ {} in worker processes)", ByteSize(w)),
            },
            self.model_loads,
            if self.model_loads == 1 { "" } else { "s" },
            self.devices.first().map_or("-", String::as_str),
        )
    }
}

/// The process's peak resident set (VmHWM), or 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    proc_status_kib("VmHWM:") * 1024
}

/// Samples the memory of the processes this process started (and theirs)
/// every 100 ms while a run goes on: [`WorkerMemory::finish`] gives the
/// peak of their summed RssAnon + RssFile.
pub struct WorkerMemory {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl WorkerMemory {
    /// Starts sampling.
    pub fn start() -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("worker-memory".into())
            .spawn(move || {
                let mut peak = 0;
                while !flag.load(Ordering::Relaxed) {
                    peak = peak.max(descendants_rss());
                    std::thread::park_timeout(Duration::from_millis(100));
                }
                peak
            })
            .ok();
        WorkerMemory { stop, thread }
    }

    /// Stops sampling; the peak.
    pub fn finish(mut self) -> u64 {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let Some(t) = self.thread.take() else {
            return 0;
        };
        t.thread().unpark();
        t.join().unwrap_or(0)
    }
}

impl Drop for WorkerMemory {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The summed own memory of every descendant of this process, through
/// /proc's `children` lists.
fn descendants_rss() -> u64 {
    let children = |pid: &str| -> Vec<String> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        let mut pids = Vec::new();
        for t in tasks.flatten() {
            let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            pids.extend(list.split_whitespace().map(str::to_string));
        }
        pids
    };
    let (mut todo, mut total) = (children("self"), 0);
    while let Some(pid) = todo.pop() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        total += (kib_in(&status, "RssAnon:") + kib_in(&status, "RssFile:")) * 1024;
        todo.extend(children(&pid));
    }
    total
}

/// The process's current resident set (VmRSS), or 0 where unknown.
pub fn rss_bytes() -> u64 {
    proc_status_kib("VmRSS:") * 1024
}

fn proc_status_kib(key: &str) -> u64 {
    kib_in(
        &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
        key,
    )
}

/// The KiB figure of `key` in a /proc status text, or 0.
fn kib_in(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
