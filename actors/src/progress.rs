//! Counters a run updates as it goes, read by a progress bar or a host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Waits kept for percentiles; later ones replace earlier ones at random.
const WAITS_KEPT: usize = 100_000;

/// Live counters of one run. Shared by `Arc`; every field only grows.
#[derive(Debug, Default)]
pub struct Progress {
    rows_total: AtomicU64,
    rows_done: AtomicU64,
    errors: AtomicU64,
    batches_done: AtomicU64,
    shards_committed: AtomicU64,
    model_loads: AtomicU64,
    store_live: AtomicU64,
    store_reserved: AtomicU64,
    store_objects: AtomicU64,
    waits: Mutex<(u64, Vec<u32>)>,
    observer: OnceLock<Observer>,
}

/// Something a run did, for a host's event stream.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ProgressEvent {
    /// The counters, at a regular interval and once at the end.
    Progress {
        /// The counters.
        #[serde(flatten)]
        snapshot: ProgressSnapshot,
        /// Rows done per second since the run started.
        rows_per_second: f64,
    },
    /// A shard is durable under its final name and in the manifest.
    ShardCommitted {
        /// Its index.
        shard: u64,
        /// Its input rows (results and bad rows).
        rows: u64,
        /// Its bad rows.
        errors: u64,
    },
}

/// Called with each event, on the thread that caused it; must not block.
pub struct Observer(Box<dyn Fn(ProgressEvent) + Send + Sync>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// A copy of the counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProgressSnapshot {
    /// Rows in the input (0 until known).
    pub rows_total: u64,
    /// Rows finished (results written or refused).
    pub rows_done: u64,
    /// Rows refused.
    pub errors: u64,
    /// Batches finished.
    pub batches_done: u64,
    /// Shards committed.
    pub shards_committed: u64,
    /// Models loaded.
    pub model_loads: u64,
    /// Object store bytes held by objects now.
    pub store_live: u64,
    /// Object store bytes reserved now.
    pub store_reserved: u64,
    /// Objects in the store now.
    pub store_objects: u64,
}

impl Progress {
    /// Sets the number of rows in the input.
    pub fn set_total(&self, rows: u64) {
        self.rows_total.store(rows, Ordering::Relaxed);
    }

    /// Records a finished batch.
    pub fn batch_done(&self, rows: u64, errors: u64) {
        self.rows_done.fetch_add(rows, Ordering::Relaxed);
        self.errors.fetch_add(errors, Ordering::Relaxed);
        self.batches_done.fetch_add(1, Ordering::Relaxed);
    }

    /// Records rows committed by an earlier run.
    pub fn resumed(&self, rows: u64, errors: u64) {
        self.rows_done.fetch_add(rows, Ordering::Relaxed);
        self.errors.fetch_add(errors, Ordering::Relaxed);
    }

    /// Records a committed shard.
    pub fn shard_committed(&self, shard: u64, rows: u64, errors: u64) {
        self.shards_committed.fetch_add(1, Ordering::Relaxed);
        self.emit(ProgressEvent::ShardCommitted {
            shard,
            rows,
            errors,
        });
    }

    /// Sets the one function called with every event; false if one is
    /// set already. It runs on the thread that caused the event and must
    /// not block (send to a bounded channel with `try_send`, say).
    pub fn observe(&self, f: impl Fn(ProgressEvent) + Send + Sync + 'static) -> bool {
        self.observer.set(Observer(Box::new(f))).is_ok()
    }

    /// Passes `event` to the observer, if one is set.
    pub fn emit(&self, event: ProgressEvent) {
        if let Some(o) = self.observer.get() {
            (o.0)(event);
        }
    }

    /// Records a model load.
    pub fn model_loaded(&self) {
        self.model_loads.fetch_add(1, Ordering::Relaxed);
    }

    /// Publishes the store's gauges.
    pub fn store_gauge(&self, live: u64, reserved: u64, objects: u64) {
        self.store_live.store(live, Ordering::Relaxed);
        self.store_reserved.store(reserved, Ordering::Relaxed);
        self.store_objects.store(objects, Ordering::Relaxed);
    }

    /// Records how long an idle actor waited for its next batch.
    pub fn record_wait(&self, wait: Duration) {
        let micros = wait.as_micros().min(u128::from(u32::MAX)) as u32;
        let mut w = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, kept) = &mut *w;
        *seen += 1;
        if kept.len() < WAITS_KEPT {
            kept.push(micros);
        } else {
            // Reservoir sampling with a cheap deterministic mix.
            let j = (seen.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % *seen;
            if (j as usize) < WAITS_KEPT {
                kept[j as usize] = micros;
            }
        }
    }

    /// The 50th and 99th percentiles of next-batch waits, if any.
    pub fn wait_percentiles(&self) -> Option<(Duration, Duration)> {
        let w = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = w.1.clone();
        drop(w);
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |q: f64| {
            Duration::from_micros(u64::from(v[((v.len() - 1) as f64 * q).round() as usize]))
        };
        Some((at(0.5), at(0.99)))
    }

    /// The counters now.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            rows_total: self.rows_total.load(Ordering::Relaxed),
            rows_done: self.rows_done.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            batches_done: self.batches_done.load(Ordering::Relaxed),
            shards_committed: self.shards_committed.load(Ordering::Relaxed),
            model_loads: self.model_loads.load(Ordering::Relaxed),
            store_live: self.store_live.load(Ordering::Relaxed),
            store_reserved: self.store_reserved.load(Ordering::Relaxed),
            store_objects: self.store_objects.load(Ordering::Relaxed),
        }
    }
}
