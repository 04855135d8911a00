//! The Sink: restores input order, writes results to part files, commits
//! each shard atomically and records it in the manifest.
//!
//! ```text
//!  Deliver(batch k) ──▶ reorder buffer (order on) ──▶ .part-NNNNN.jsonl.tmp
//!                                                       │ shard full / Finish
//!                                                       ▼ flush, fsync, rename, fsync dir
//!                                                     part-NNNNN.jsonl + a _manifest.jsonl line
//! ```
//!
//! A shard is `shard_batches` consecutive batches (in input order when order
//! is preserved, in arrival order otherwise). A part file under its final
//! name is always complete; a temporary one is removed on every exit path.
//! With order off, each result line starts with `"_row": N`, its input row.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;

use crate::batch::OutputBatch;
use crate::error::PipelineError;
use crate::messages::{Deliver, Finish, SinkSummary};
use crate::progress::Progress;
use crate::store::Holder;

/// The manifest's name in the output directory.
pub const MANIFEST: &str = "_manifest.jsonl";
/// The errors file's name in the output directory.
pub const ERRORS: &str = "_errors.jsonl";
/// The success marker's name in the output directory.
pub const SUCCESS: &str = "_SUCCESS";

/// The name of shard `i`'s part file.
pub fn part_name(i: u64) -> String {
    format!("part-{i:05}.jsonl")
}

/// Where and how the Sink writes.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// The output directory (exists, empty of stook's files).
    pub dir: PathBuf,
    /// Write in input order (true) or as batches finish (false).
    pub preserve_order: bool,
    /// Batches per shard.
    pub shard_batches: u64,
}

/// One committed shard, as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardRecord {
    /// Shard index.
    pub shard: u64,
    /// Part file name.
    pub part: String,
    /// Runs of batch indices it holds, as `[first, last]`.
    pub batches: Vec<(u64, u64)>,
    /// Result rows in it.
    pub rows: u64,
    /// Bad rows of its batches.
    pub errors: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// CRC-32 of its bytes.
    pub crc32: u32,
    /// The errors file's length once this shard's errors were written.
    pub errors_end: u64,
}

struct OpenShard {
    index: u64,
    tmp: PathBuf,
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    batches: Vec<(u64, u64)>,
    count: u64,
    rows: u64,
    errors: u64,
    bytes: u64,
}

impl OpenShard {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.crc.update(data);
        self.bytes += data.len() as u64;
        self.out.write_all(data)
    }

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
    next_shard: u64,
    shard: Option<OpenShard>,
    manifest: Option<File>,
    errors: Option<BufWriter<File>>,
    errors_len: u64,
    summary: SinkSummary,
    line: Vec<u8>,
}

impl Sink {
    /// A Sink writing into `cfg.dir`.
    pub fn new(cfg: SinkConfig, progress: Arc<Progress>) -> Self {
        Sink {
            cfg,
            progress,
            pending: BTreeMap::new(),
            next_index: 0,
            next_shard: 0,
            shard: None,
            manifest: None,
            errors: None,
            errors_len: 0,
            summary: SinkSummary::default(),
            line: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.cfg.dir.join(name)
    }

    fn io<T>(&self, name: &str, r: std::io::Result<T>) -> Result<T, PipelineError> {
        r.map_err(|e| PipelineError::output(self.path(name), e))
    }

    fn write_batch(&mut self, d: Deliver) -> Result<(), PipelineError> {
        if self.shard.is_none() {
            let index = self.next_shard;
            let tmp = self.path(&format!(".{}.tmp", part_name(index)));
            let file = self.io(&part_name(index), File::create(&tmp))?;
            self.shard = Some(OpenShard {
                index,
                tmp,
                out: BufWriter::with_capacity(1 << 20, file),
                crc: crc32fast::Hasher::new(),
                batches: Vec::new(),
                count: 0,
                rows: 0,
                errors: 0,
                bytes: 0,
            });
        }
        let mut rows = 0u64;
        if let Some(obj) = &d.output {
            obj.set_holder(Holder::Sink);
            let out = OutputBatch::decode(obj)?;
            rows = out.len() as u64;
            let Some(shard) = self.shard.as_mut() else {
                unreachable!()
            };
            let line = &mut self.line;
            let mut res = Ok(());
            for i in 0..out.len() {
                let (row, json) = out.get(i);
                line.clear();
                if self.cfg.preserve_order {
                    line.extend_from_slice(json.as_bytes());
                } else {
                    with_row_number(line, row, json);
                }
                line.push(b'\n');
                res = shard.write(line);
                if res.is_err() {
                    break;
                }
            }
            let name = part_name(shard.index);
            self.io(&name, res)?;
        }
        let n_err = d.errors.len() as u64;
        if !d.errors.is_empty() {
            self.write_errors(&d)?;
        }
        let Some(shard) = self.shard.as_mut() else {
            unreachable!()
        };
        shard.rows += rows;
        shard.errors += n_err;
        shard.note_batch(d.plan.index);
        self.summary.rows_written += rows;
        self.summary.errors += n_err;
        self.summary.blank_lines += d.plan.blank_lines;
        self.progress.batch_done(rows + n_err, n_err);
        drop(d);
        if shard.count >= self.cfg.shard_batches {
            self.commit()?;
        }
        Ok(())
    }

    fn write_errors(&mut self, d: &Deliver) -> Result<(), PipelineError> {
        if self.errors.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(ERRORS));
            let f = self.io(ERRORS, f)?;
            self.errors = Some(BufWriter::new(f));
        }
        let Some(w) = self.errors.as_mut() else {
            unreachable!()
        };
        let mut buf = Vec::new();
        for e in &d.errors {
            // A RowError always serialises.
            let _ = serde_json::to_writer(&mut buf, e);
            buf.push(b'\n');
        }
        self.errors_len += buf.len() as u64;
        let r = w.write_all(&buf);
        self.io(ERRORS, r)
    }

    /// Makes the open shard durable under its final name, then records it.
    fn commit(&mut self) -> Result<(), PipelineError> {
        let Some(shard) = self.shard.take() else {
            return Ok(());
        };
        let name = part_name(shard.index);
        let OpenShard {
            index,
            tmp,
            out,
            crc,
            batches,
            rows,
            errors,
            bytes,
            ..
        } = shard;
        let file = self.io(&name, out.into_inner().map_err(|e| e.into_error()))?;
        self.io(&name, file.sync_all())?;
        drop(file);
        if let Some(w) = self.errors.as_mut() {
            let r = w.flush().and_then(|_| w.get_ref().sync_data());
            self.io(ERRORS, r)?;
        }
        self.io(&name, std::fs::rename(&tmp, self.path(&name)))?;
        self.io(&name, sync_dir(&self.cfg.dir))?;
        let record = ShardRecord {
            shard: index,
            part: name.clone(),
            batches,
            rows,
            errors,
            bytes,
            crc32: crc.finalize(),
            errors_end: self.errors_len,
        };
        self.append_manifest(&record)?;
        self.next_shard = index + 1;
        self.summary.parts.push(name);
        self.summary.bytes_written += bytes;
        self.progress.shard_committed();
        tracing::debug!(shard = index, rows, bytes, "shard committed");
        Ok(())
    }

    fn append_manifest(&mut self, record: &ShardRecord) -> Result<(), PipelineError> {
        if self.manifest.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(MANIFEST));
            self.manifest = Some(self.io(MANIFEST, f)?);
        }
        let Some(m) = self.manifest.as_mut() else {
            unreachable!()
        };
        let mut line = serde_json::to_vec(record).unwrap_or_default();
        line.push(b'\n');
        // One write of one line, then a sync: a crash leaves at most a torn
        // last line, which a reader ignores.
        let r = m.write_all(&line).and_then(|_| m.sync_data());
        self.io(MANIFEST, r)
    }

    fn discard_open_shard(&mut self) {
        if let Some(shard) = self.shard.take() {
            drop(shard.out);
            let _ = std::fs::remove_file(&shard.tmp);
        }
    }
}

/// `{"_row":N,` followed by the rest of the result object.
fn with_row_number(line: &mut Vec<u8>, row: u64, json: &str) {
    line.extend_from_slice(b"{\"_row\":");
    line.extend_from_slice(row.to_string().as_bytes());
    let rest = json
        .trim_start()
        .strip_prefix('{')
        .unwrap_or(json)
        .trim_start();
    if !rest.starts_with('}') {
        line.push(b',');
    }
    line.extend_from_slice(rest.as_bytes());
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
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
            let marker = File::create(self.path(SUCCESS)).and_then(|f| f.sync_all());
            self.io(SUCCESS, marker)?;
            self.io(SUCCESS, sync_dir(&self.cfg.dir))?;
        } else {
            self.discard_open_shard();
            if let Some(w) = self.errors.as_mut() {
                let _ = w.flush();
            }
        }
        Ok(self.summary.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_numbers_lead_the_object() {
        let mut v = Vec::new();
        with_row_number(&mut v, 7, r#"{"a":1}"#);
        assert_eq!(v, br#"{"_row":7,"a":1}"#);
        v.clear();
        with_row_number(&mut v, 0, "{}");
        assert_eq!(v, br#"{"_row":0}"#);
    }
}
