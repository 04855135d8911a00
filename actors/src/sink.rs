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
    append_record, errors_name, open_for_append, part_name, AtomicFile, ShardRecord, Todo,
};
use crate::error::PipelineError;
use crate::json_lines::LineEncoder;
use crate::messages::{Deliver, Finish, SinkSummary};
use crate::parts::{OutputFormat, PartWriter};
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
    /// Digits in part and bad-row file names:
    /// [`crate::checkpoint::name_width`] of the job's shard count.
    pub name_width: usize,
    /// The output prefix in object storage that `dir` stages for: each
    /// committed shard is uploaded, then the manifest.
    pub publish: Option<crate::checkpoint::remote::Staged>,
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
    /// The part file's final name, and the bad-row file's.
    name: String,
    errors_name: String,
    part: PartWriter,
    errors: Option<AtomicFile>,
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
    pub(crate) fn new(cfg: SinkConfig, progress: Arc<Progress>) -> Self {
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
            let name = part_name(index, self.cfg.name_width, self.cfg.format.name());
            let part = PartWriter::create(&self.cfg.dir, &name, self.cfg.format, &self.cfg.table);
            let part = self.io(&name, part)?;
            self.shard = Some(OpenShard {
                index,
                errors_name: errors_name(index, self.cfg.name_width),
                name,
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
            let lines = LineEncoder::new(out.batch().schema_ref(), false).lines(out.batch());
            batch.results = lines
                .into_iter()
                .enumerate()
                .map(|(i, json)| (out.row(i), json))
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
        let shard = self.shard_for(d.plan.index)?;
        let rows = match &output {
            Some(out) => shard
                .part
                .write(out, !preserve_order)
                .map_err(fail(shard.name.clone()))?,
            None => 0,
        };
        if !d.errors.is_empty() {
            let name = shard.errors_name.clone();
            write_bad_rows(shard, &dir, &d.errors).map_err(fail(name))?;
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
        let name = shard.name;
        let (mut errors_bytes, mut errors_crc32) = (0, None);
        if let Some(errors) = shard.errors {
            let ename = shard.errors_name;
            let r = errors.commit();
            let (bytes, crc) = self.io(&ename, r)?;
            (errors_bytes, errors_crc32) = (bytes, Some(crc));
        }
        // Each commit syncs the directory: the part and its bad rows are
        // durable under their names before the manifest records them.
        let (bytes, crc32) = self.io(&name, shard.part.commit())?;
        let record = ShardRecord {
            shard: shard.index,
            part: name.clone(),
            batches: shard.batches,
            rows: shard.rows,
            errors: shard.errors_count,
            bytes,
            crc32,
            errors_bytes,
            errors_crc32,
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
        if let Some(staged) = &self.cfg.publish {
            staged.publish(&record, &manifest).map_err(|e| match e {
                crate::checkpoint::protocol::CheckpointError::Io { path, source } => {
                    PipelineError::output(path, source)
                }
                other => PipelineError::output(staged.shown(), std::io::Error::other(other)),
            })?;
        }
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
        none => none.insert(AtomicFile::create(dir, &shard.errors_name)?),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Worker;
    use crate::messages::BatchPlan;
    use crate::results::{encode_output, output_bound, result_columns, ResultWriter};
    use crate::store::{ObjectRef, ObjectStore};
    use arrow_schema::{DataType, Field, Schema};

    const ROWS: u64 = 3;

    fn plan(index: u64) -> BatchPlan {
        let first = index * ROWS;
        BatchPlan {
            index,
            first_row: first,
            rows: ROWS as usize,
            bytes: 0,
            quotes: 0,
            lines: (first + 1, first + ROWS),
            blank_lines: 0,
            range: (0, 0),
        }
    }

    /// Batch `index`'s results: `{"r":N}` for each of its rows.
    fn output(store: &ObjectStore, index: u64) -> ObjectRef {
        let mut w = ResultWriter::new();
        for r in index * ROWS..(index + 1) * ROWS {
            w.push(r, &format!("{{\"r\":{r}}}"));
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("_row", DataType::UInt64, false),
            result_columns(None).field(0).clone(),
        ]));
        let bound = output_bound(&schema, ROWS as usize, 64);
        let (rows, cols) = w.finish().unwrap();
        encode_output(
            &schema,
            rows,
            cols,
            store.try_reserve(bound).unwrap().unwrap(),
        )
        .unwrap()
    }

    fn sink_config(dir: &Path, preserve_order: bool, name_width: usize) -> SinkConfig {
        std::fs::write(dir.join("_manifest.jsonl"), "").unwrap();
        SinkConfig {
            dir: dir.to_path_buf(),
            preserve_order,
            todo: Todo {
                done: Default::default(),
                worker: Worker::ALONE,
                shard_batches: 2,
            },
            done_shards: Default::default(),
            stream: None,
            format: OutputFormat::Jsonl,
            table: result_columns(None),
            name_width,
            publish: None,
        }
    }

    fn lines(dir: &Path, part: &str) -> Vec<String> {
        std::fs::read_to_string(dir.join(part))
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn parts(dir: &Path) -> Vec<String> {
        let mut p: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("part-"))
            .collect();
        p.sort();
        p
    }

    /// Delivers batches `order` to a Sink over `dir`, then finishes
    /// (`complete` or not); the summary, the part files committed after
    /// each delivery, and the store (to check it is empty).
    fn deliver(
        dir: &Path,
        preserve_order: bool,
        order: &[u64],
        complete: bool,
    ) -> (SinkSummary, Vec<usize>, ObjectStore) {
        deliver_named(dir, preserve_order, order, complete, 5)
    }

    fn deliver_named(
        dir: &Path,
        preserve_order: bool,
        order: &[u64],
        complete: bool,
        name_width: usize,
    ) -> (SinkSummary, Vec<usize>, ObjectStore) {
        let store = ObjectStore::new(1 << 20).unwrap();
        let (cfg, store2, d) = (
            sink_config(dir, preserve_order, name_width),
            store.clone(),
            dir.to_owned(),
        );
        let order = order.to_vec();
        let (summary, committed) = actix::System::new().block_on(async move {
            let sink = Sink::new(cfg, Arc::new(Progress::default())).start();
            let mut committed = Vec::new();
            for i in order {
                let batch = Deliver {
                    plan: plan(i),
                    output: Some(output(&store2, i)),
                    errors: Vec::new(),
                    counters: [("n".to_string(), 1)].into(),
                };
                sink.send(batch).await.unwrap().unwrap();
                committed.push(parts(&d).len());
            }
            let s = sink.send(Finish { complete }).await.unwrap().unwrap();
            (s, committed)
        });
        (summary, committed, store)
    }

    #[test]
    fn batches_finished_out_of_order_are_written_in_input_order_a_shard_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (summary, committed, store) = deliver(d, true, &[2, 0, 4, 3, 1], true);
        // Nothing is written until batch 0 and 1 are both there; then
        // shards 0 (batches 0-1) and 1 (2-3) at once; 4 at the finish.
        assert_eq!(committed, vec![0, 0, 0, 0, 2]);
        assert_eq!(
            summary.parts,
            vec!["part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl"]
        );
        assert_eq!(summary.rows_written, 15);
        assert_eq!(summary.counters.get("n"), Some(&5));
        let all: Vec<String> = summary.parts.iter().flat_map(|p| lines(d, p)).collect();
        let want: Vec<String> = (0..15).map(|r| format!("{{\"r\":{r}}}")).collect();
        assert_eq!(all, want);
        assert_eq!(lines(d, "_manifest.jsonl").len(), 3);
        // Every object was released.
        assert_eq!(store.stats().objects, 0);
    }

    #[test]
    fn part_files_are_named_with_the_jobs_width() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (summary, _, _) = deliver_named(d, true, &[1, 0, 2], true, 7);
        assert_eq!(
            summary.parts,
            vec!["part-0000000.jsonl", "part-0000001.jsonl"]
        );
        assert!(lines(d, "_manifest.jsonl")[0].contains("\"part-0000000.jsonl\""));
    }

    #[test]
    fn with_order_off_batches_are_written_as_they_come_each_row_numbered() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (summary, _, store) = deliver(d, false, &[2, 0, 1], true);
        let all: Vec<String> = summary.parts.iter().flat_map(|p| lines(d, p)).collect();
        let rows =
            |i: u64| (i * ROWS..(i + 1) * ROWS).map(|r| format!("{{\"_row\":{r},\"r\":{r}}}"));
        let want: Vec<String> = rows(2).chain(rows(0)).chain(rows(1)).collect();
        assert_eq!(all, want);
        assert_eq!(store.stats().objects, 0);
    }

    #[test]
    fn an_unfinished_run_commits_nothing_more_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (summary, _, store) = deliver(d, true, &[0, 1, 2], false);
        // Shard 0 was complete; shard 1 (batch 2 of 2-3) is dropped.
        assert_eq!(summary.parts, vec!["part-00000.jsonl"]);
        let names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
        assert_eq!(store.stats().objects, 0);
    }
}
