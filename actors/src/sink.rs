//! The Sink: restores input order, writes results to part files, commits
//! each shard atomically and records it in the manifest.
//!
//! ```text
//!  Deliver(batch k) ──▶ reorder buffer (order on) ──▶ .part-NNNNN.jsonl.tmp (+ bad rows)
//!                                                       │ shard full / Finish
//!                                                       ▼ flush, fsync, rename, fsync dir
//!                                                     part-NNNNN.jsonl + a _manifest.jsonl line
//! ```
//!
//! With order preserved, shard `s` is batches `s·B … s·B+B-1`, so a resumed
//! run writes the same parts as an uninterrupted one; without, a shard is
//! `B` batches in the order they finished, and each result line starts with
//! `"_row": N`, its input row. A part under its final name is always
//! complete; a temporary one is removed on every exit path.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;

use crate::checkpoint::{
    append_record, errors_name, open_for_append, part_name, sync_dir, ShardRecord, Todo,
};
use crate::error::PipelineError;
use crate::json_lines::LineEncoder;
use crate::messages::{Deliver, Finish, SinkSummary};
use crate::parts::{OutputFormat, PartWriter, TempFile};
use crate::progress::Progress;
use crate::results::OutputBatch;
use crate::rows::RowError;
use crate::store::Holder;

/// Where and how the Sink writes.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// The output directory, with a manifest (header written).
    pub dir: PathBuf,
    /// Write in input order (true) or as batches finish (false).
    pub preserve_order: bool,
    /// Batches not delivered (not this worker's, or committed by an
    /// earlier run), and the batches per shard.
    pub todo: Todo,
    /// Shards already committed by an earlier run.
    pub done_shards: BTreeSet<u64>,
    /// Send results here, in order, instead of writing files.
    pub stream: Option<ResultSender>,
    /// The part files' format.
    pub format: OutputFormat,
    /// A table part's columns ([`crate::parts::table_schema`]).
    pub table: arrow_schema::SchemaRef,
}

/// One batch of results as a stream carries it, in input order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResultBatch {
    /// Results as (0-based input row, JSON object text).
    pub results: Vec<(u64, String)>,
    /// Rows refused (`on_error = "skip"`).
    pub errors: Vec<RowError>,
}

/// Where a streaming Sink sends batches: a bounded channel, and the run's
/// cancel flag, checked while the channel is full.
#[derive(Clone, Debug)]
pub struct ResultSender {
    /// The channel.
    pub tx: tokio::sync::mpsc::Sender<ResultBatch>,
    /// Set when the run stops.
    pub cancel: Arc<std::sync::atomic::AtomicBool>,
}

impl ResultSender {
    /// Sends `batch`, waiting while the consumer is behind: this blocks the
    /// Sink, which holds the batch unfinished, which stops admission. A
    /// cancel or a dropped receiver ends the wait.
    fn send(&self, mut batch: ResultBatch) -> Result<(), PipelineError> {
        use tokio::sync::mpsc::error::TrySendError;
        loop {
            match self.tx.try_send(batch) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(_)) => return Err(PipelineError::Cancelled),
                Err(TrySendError::Full(b)) => {
                    if self.cancel.load(std::sync::atomic::Ordering::SeqCst) {
                        return Err(PipelineError::Cancelled);
                    }
                    batch = b;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }
}

struct OpenShard {
    index: u64,
    part: PartWriter,
    errors: Option<TempFile>,
    batches: Vec<(u64, u64)>,
    count: u64,
    rows: u64,
    errors_count: u64,
}

impl OpenShard {
    fn note_batch(&mut self, index: u64) {
        match self.batches.last_mut() {
            Some((_, last)) if *last + 1 == index => *last = index,
            _ => self.batches.push((index, index)),
        }
        self.count += 1;
    }
}

/// The Sink actor.
pub struct Sink {
    cfg: SinkConfig,
    progress: Arc<Progress>,
    pending: BTreeMap<u64, Deliver>,
    next_index: u64,
    next_unordered_shard: u64,
    shard: Option<OpenShard>,
    manifest: Option<File>,
    summary: SinkSummary,
}

impl Sink {
    /// A Sink writing into `cfg.dir`.
    pub fn new(cfg: SinkConfig, progress: Arc<Progress>) -> Self {
        let next_unordered_shard = cfg.done_shards.last().map_or(0, |s| s + 1);
        let mut sink = Sink {
            cfg,
            progress,
            pending: BTreeMap::new(),
            next_index: 0,
            next_unordered_shard,
            shard: None,
            manifest: None,
            summary: SinkSummary::default(),
        };
        sink.skip_done();
        sink
    }

    fn skip_done(&mut self) {
        while self.cfg.todo.skips(self.next_index) {
            self.next_index += 1;
        }
    }

    fn io<T>(&self, name: &str, r: std::io::Result<T>) -> Result<T, PipelineError> {
        r.map_err(|e| PipelineError::output(self.cfg.dir.join(name), e))
    }

    /// The shard batch `index` belongs to; opens it (committing another
    /// that is open) when needed.
    fn shard_for(&mut self, index: u64) -> Result<&mut OpenShard, PipelineError> {
        let wanted = if self.cfg.preserve_order {
            Some(index / self.cfg.todo.shard_batches)
        } else {
            None
        };
        if let (Some(open), Some(w)) = (&self.shard, wanted) {
            if open.index != w {
                self.commit()?;
            }
        }
        if self.shard.is_none() {
            let index = wanted.unwrap_or_else(|| {
                let s = self.next_unordered_shard;
                self.next_unordered_shard += 1;
                s
            });
            let name = part_name(index, self.cfg.format.name());
            let part = PartWriter::create(&self.cfg.dir, &name, self.cfg.format, &self.cfg.table);
            let part = self.io(&name, part)?;
            self.shard = Some(OpenShard {
                index,
                part,
                errors: None,
                batches: Vec::new(),
                count: 0,
                rows: 0,
                errors_count: 0,
            });
        }
        self.shard
            .as_mut()
            .ok_or(PipelineError::ActorGone("sink shard"))
    }

    fn add_counters(&mut self, counters: &crate::messages::Counters) {
        for (k, v) in counters {
            *self.summary.counters.entry(k.clone()).or_default() += v;
        }
    }

    fn stream_batch(&mut self, d: Deliver, to: &ResultSender) -> Result<(), PipelineError> {
        self.add_counters(&d.counters);
        let mut batch = ResultBatch::default();
        if let Some(obj) = &d.output {
            obj.set_holder(Holder::Sink);
            let out = OutputBatch::decode(obj)?;
            let encoder = LineEncoder::new(out.batch().schema_ref(), false);
            batch.results = (0..out.len())
                .map(|i| {
                    let mut json = String::new();
                    encoder.write_row(out.batch(), i, &mut json);
                    json.pop(); // the newline
                    (out.row(i), json)
                })
                .collect();
        }
        let (rows, n_err) = (batch.results.len() as u64, d.errors.len() as u64);
        batch.errors = d.errors;
        drop(d.output);
        to.send(batch)?;
        self.summary.rows_written += rows;
        self.summary.errors += n_err;
        self.progress.batch_done(rows + n_err, n_err);
        Ok(())
    }

    fn write_batch(&mut self, d: Deliver) -> Result<(), PipelineError> {
        if let Some(to) = self.cfg.stream.clone() {
            return self.stream_batch(d, &to);
        }
        let (preserve_order, dir) = (self.cfg.preserve_order, self.cfg.dir.clone());
        let fail = |name: String| {
            let path = dir.join(name);
            move |e| PipelineError::output(path, e)
        };
        let output = match &d.output {
            Some(obj) => {
                obj.set_holder(Holder::Sink);
                Some(OutputBatch::decode(obj)?)
            }
            None => None,
        };
        let ext = self.cfg.format.name();
        let shard = self.shard_for(d.plan.index)?;
        let rows = match &output {
            Some(out) => shard
                .part
                .write(out, !preserve_order)
                .map_err(fail(part_name(shard.index, ext)))?,
            None => 0,
        };
        if !d.errors.is_empty() {
            write_bad_rows(shard, &dir, &d.errors).map_err(fail(errors_name(shard.index)))?;
        }
        let n_err = d.errors.len() as u64;
        shard.rows += rows + n_err;
        shard.errors_count += n_err;
        shard.note_batch(d.plan.index);
        let full = shard.count >= self.cfg.todo.shard_batches;
        self.add_counters(&d.counters);
        self.summary.rows_written += rows;
        self.summary.errors += n_err;
        self.summary.blank_lines += d.plan.blank_lines;
        self.progress.batch_done(rows + n_err, n_err);
        drop((output, d));
        if full {
            self.commit()?;
        }
        Ok(())
    }

    /// Makes the open shard durable under its final name, then records it.
    fn commit(&mut self) -> Result<(), PipelineError> {
        let Some(shard) = self.shard.take() else {
            return Ok(());
        };
        let dir = self.cfg.dir.clone();
        let name = part_name(shard.index, self.cfg.format.name());
        let mut errors_bytes = 0;
        if let Some(errors) = shard.errors {
            let ename = errors_name(shard.index);
            let r = errors.commit(&dir, &ename);
            errors_bytes = self.io(&ename, r)?.0;
        }
        let (bytes, crc32) = self.io(&name, shard.part.commit(&dir, &name))?;
        self.io(&name, sync_dir(&dir))?;
        let record = ShardRecord {
            shard: shard.index,
            part: name.clone(),
            batches: shard.batches,
            rows: shard.rows,
            errors: shard.errors_count,
            bytes,
            crc32,
            errors_bytes,
        };
        let manifest = self.cfg.todo.worker.manifest_name();
        if self.manifest.is_none() {
            let f = open_for_append(&dir, &manifest);
            self.manifest = Some(self.io(&manifest, f)?);
        }
        let Some(m) = self.manifest.as_mut() else {
            unreachable!("opened above")
        };
        let r = append_record(m, &record);
        self.io(&manifest, r)?;
        self.summary.parts.push(name);
        self.summary.bytes_written += bytes;
        self.progress
            .shard_committed(record.shard, record.rows, record.errors);
        tracing::debug!(
            shard = record.shard,
            rows = record.rows,
            bytes,
            "shard committed"
        );
        Ok(())
    }

    fn discard_open_shard(&mut self) {
        if let Some(shard) = self.shard.take() {
            shard.part.discard();
            if let Some(e) = shard.errors {
                e.discard();
            }
        }
    }
}

/// Appends bad rows to the shard's errors file, creating it on first use.
fn write_bad_rows(shard: &mut OpenShard, dir: &Path, errors: &[RowError]) -> std::io::Result<()> {
    let file = match &mut shard.errors {
        Some(f) => f,
        none => none.insert(TempFile::create(dir, &errors_name(shard.index))?),
    };
    let mut buf = Vec::new();
    for e in errors {
        // A RowError always serialises.
        let _ = serde_json::to_writer(&mut buf, e);
        buf.push(b'\n');
    }
    file.write_all(&buf)
}

impl Actor for Sink {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.discard_open_shard();
    }
}

impl Handler<Deliver> for Sink {
    type Result = Result<(), PipelineError>;

    fn handle(&mut self, d: Deliver, _: &mut Context<Self>) -> Self::Result {
        if !self.cfg.preserve_order {
            return self.write_batch(d);
        }
        self.pending.insert(d.plan.index, d);
        while let Some(d) = self.pending.remove(&self.next_index) {
            self.next_index += 1;
            self.skip_done();
            self.write_batch(d)?;
        }
        Ok(())
    }
}

impl Handler<Finish> for Sink {
    type Result = Result<SinkSummary, PipelineError>;

    fn handle(&mut self, msg: Finish, _: &mut Context<Self>) -> Self::Result {
        self.pending.clear();
        if msg.complete {
            self.commit()?;
        } else {
            self.discard_open_shard();
        }
        Ok(self.summary.clone())
    }
}
