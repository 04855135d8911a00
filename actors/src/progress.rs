//! Counters a run updates as it goes, read by a progress bar or a host.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one run. Shared by `Arc`; every field only grows.
#[derive(Debug, Default)]
pub struct Progress {
    rows_total: AtomicU64,
    rows_done: AtomicU64,
    errors: AtomicU64,
    batches_done: AtomicU64,
    shards_committed: AtomicU64,
    model_loads: AtomicU64,
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
    pub fn shard_committed(&self) {
        self.shards_committed.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a model load.
    pub fn model_loaded(&self) {
        self.model_loads.fetch_add(1, Ordering::Relaxed);
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
        }
    }
}
