//! The Source: maps the input file, cuts it into batches of rows, validates
//! every row against the backend's schema and encodes good rows into the
//! object store. It produces a batch only when the Scheduler hands it a
//! reservation, so backpressure lands here.
//!
//! ```text
//!   Scheduler ──PlanBatch──▶ Source ──▶ BatchPlan (extent, rows, bytes)
//!   Scheduler ──ProduceBatch{plan, reservation}──▶ Source ──▶ InputBatch{ObjectRef}
//! ```
//!
//! The input is never read into the heap: lines are slices of the mapping,
//! and a row exists in the heap only while its batch is being encoded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;
use memmap2::Mmap;

use crate::batch::encode_input;
use crate::error::PipelineError;
use crate::messages::{BatchPlan, InputBatch, PlanBatch, ProduceBatch};
use crate::rows::{
    data_start, excerpt, parse_row, Line, Lines, ParsedRow, RequestSchema, RowError, RowProblem,
};

/// A memory-mapped input file.
pub struct InputFile {
    path: PathBuf,
    shown: Arc<str>,
    map: Option<Mmap>,
}

impl InputFile {
    /// Maps `path`. An empty file maps to no bytes.
    pub fn open(path: &Path) -> Result<Self, PipelineError> {
        let err = |source| PipelineError::Input {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        if meta.is_dir() {
            return Err(err(std::io::Error::other(
                "is a directory, expected a JSON Lines file",
            )));
        }
        // SAFETY: the map is read-only; a file truncated by another process
        // while it runs is outside what stook can defend against (documented).
        let map = if meta.len() == 0 {
            None
        } else {
            Some(unsafe { Mmap::map(&file) }.map_err(err)?)
        };
        if let Some(m) = &map {
            // Rows are read front to back, once.
            let _ = m.advise(memmap2::Advice::Sequential);
        }
        Ok(InputFile {
            path: path.to_path_buf(),
            shown: path.display().to_string().into(),
            map,
        })
    }

    /// No file: the input of rows supplied from memory, named `name` in
    /// messages.
    pub fn none(name: &str) -> Self {
        InputFile {
            path: PathBuf::from(name),
            shown: name.into(),
            map: None,
        }
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Drops the mapping's pages in `[from, to)` from this process's
    /// resident set (whole pages only). The file's pages stay in the page
    /// cache; reading them again faults them back in. This keeps resident
    /// memory independent of input size.
    pub fn release(&self, from: usize, to: usize) {
        let Some(m) = &self.map else { return };
        let page = 4096;
        let (a, b) = (from.div_ceil(page) * page, to.min(m.len()) / page * page);
        if b > a {
            // SAFETY: the mapping is read-only and file-backed; dropping its
            // pages only makes later reads fault them in from the file.
            let _ =
                unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a) };
        }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as shown in messages.
    pub fn shown(&self) -> Arc<str> {
        self.shown.clone()
    }

    /// Checks every row, on `threads` threads, keeping at most `keep` errors
    /// (all are counted).
    pub fn validate(
        &self,
        schema: &RequestSchema,
        limits: &RowLimits,
        threads: usize,
        keep: usize,
    ) -> Validation {
        let data = self.bytes();
        let start = data_start(data);
        let chunks = split_at_lines(data, start, threads.max(1));
        let parts: Vec<Validation> = std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|&(a, b)| s.spawn(move || self.validate_range(schema, limits, a, b, keep)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut total = Validation::default();
        let (mut lines_before, mut rows_before) = (0u64, 0u64);
        for part in parts {
            for mut e in part.errors {
                e.line += lines_before;
                e.row += rows_before;
                if total.errors.len() < keep {
                    total.errors.push(e);
                }
            }
            total.error_count += part.error_count;
            total.rows += part.rows;
            total.blank_lines += part.blank_lines;
            lines_before += part.lines;
            rows_before += part.rows;
            total.lines += part.lines;
        }
        total
    }

    fn validate_range(
        &self,
        schema: &RequestSchema,
        limits: &RowLimits,
        a: usize,
        b: usize,
        keep: usize,
    ) -> Validation {
        let mut v = Validation::default();
        let mut released = a;
        for line in Lines::new(&self.bytes()[..b], a, 1) {
            if line.offset - released >= RELEASE_EVERY {
                self.release(released, line.offset);
                released = line.offset;
            }
            v.lines += 1;
            if line.is_blank() {
                v.blank_lines += 1;
                continue;
            }
            if let Err(e) = check_row(&line, schema, limits) {
                v.error_count += 1;
                if v.errors.len() < keep {
                    v.errors.push(row_error(&self.shown, &line, v.rows, e));
                }
            }
            v.rows += 1;
        }
        self.release(released, b);
        v
    }
}

/// How much input is read between releases of its pages.
const RELEASE_EVERY: usize = 8 << 20;

/// Cuts `data[start..]` into about `n` ranges that end at line ends.
fn split_at_lines(data: &[u8], start: usize, n: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut a = start;
    let step = (data.len() - start) / n + 1;
    while a < data.len() {
        let guess = (a + step).min(data.len());
        let b = match memchr::memchr(b'\n', &data[guess..]) {
            Some(i) if guess < data.len() => guess + i + 1,
            _ => data.len(),
        };
        out.push((a, b));
        a = b;
    }
    out
}

/// The result of checking every row.
#[derive(Clone, Debug, Default)]
pub struct Validation {
    /// Lines read.
    pub lines: u64,
    /// Rows (non-blank lines).
    pub rows: u64,
    /// Blank lines skipped.
    pub blank_lines: u64,
    /// Bad rows found.
    pub error_count: u64,
    /// The first bad rows, in input order.
    pub errors: Vec<RowError>,
}

/// Limits on a single row.
#[derive(Clone, Copy, Debug)]
pub struct RowLimits {
    /// The longest line accepted, in bytes.
    pub max_line_bytes: usize,
}

fn check_row<'a>(
    line: &Line<'a>,
    schema: &RequestSchema,
    limits: &RowLimits,
) -> Result<ParsedRow<'a>, RowProblem> {
    if line.bytes.len() > limits.max_line_bytes {
        return Err(RowProblem {
            column: None,
            message: format!(
                "the line is {} bytes long, more than input.max_line_bytes = {} bytes",
                line.bytes.len(),
                limits.max_line_bytes
            ),
        });
    }
    parse_row(line.bytes, schema)
}

fn row_error(path: &Arc<str>, line: &Line<'_>, row: u64, p: RowProblem) -> RowError {
    RowError {
        path: path.clone(),
        line: line.number,
        row,
        excerpt: excerpt(line.bytes, p.column),
        column: p.column,
        message: p.message,
    }
}

/// What the Source needs to know.
pub struct SourceConfig {
    /// The backend's request schema.
    pub schema: RequestSchema,
    /// Rows per batch.
    pub batch_size: usize,
    /// Row limits.
    pub limits: RowLimits,
    /// Skip bad rows (true) or stop at the first (false).
    pub skip_bad_rows: bool,
    /// Which batches to encode; the others (other workers', or committed
    /// by an earlier run) are cut, never encoded.
    pub todo: crate::checkpoint::Todo,
}

/// Rows supplied from memory: each item one row's JSON text. It is pulled
/// only when the Scheduler admits a batch, so a slow consumer stops it.
pub type RowFeed = Box<dyn Iterator<Item = Vec<u8>> + Send>;

/// The Source actor.
pub struct Source {
    input: InputFile,
    feed: Option<RowFeed>,
    /// Rows pulled from the feed for planned batches not yet produced.
    pulled: std::collections::BTreeMap<u64, Vec<u8>>,
    cfg: SourceConfig,
    pos: usize,
    next_line: u64,
    next_row: u64,
    next_index: u64,
    released: usize,
}

impl Source {
    /// A Source over `input`, at its first row.
    pub fn new(input: InputFile, cfg: SourceConfig) -> Self {
        let pos = data_start(input.bytes());
        Source {
            input,
            feed: None,
            pulled: Default::default(),
            cfg,
            pos,
            next_line: 1,
            next_row: 0,
            next_index: 0,
            released: 0,
        }
    }

    /// The next batch not committed by an earlier run.
    fn plan(&mut self) -> Option<BatchPlan> {
        loop {
            let plan = self.cut()?;
            if !self.cfg.todo.skips(plan.index) {
                return Some(plan);
            }
        }
    }

    /// A Source over rows from memory (`name` in messages); each row's
    /// "line" is its 1-based position.
    pub fn from_rows(name: &str, feed: RowFeed, cfg: SourceConfig) -> Self {
        let mut s = Source::new(InputFile::none(name), cfg);
        s.feed = Some(feed);
        s
    }

    /// Pulls up to a batch of rows from the feed into a buffer of lines.
    fn cut_feed(&mut self) -> Option<BatchPlan> {
        let feed = self.feed.as_mut()?;
        let mut buf = Vec::new();
        let (mut rows, mut bytes, mut quotes) = (0usize, 0usize, 0usize);
        let count_quotes = self.cfg.schema.has_lists();
        while rows < self.cfg.batch_size {
            let Some(row) = feed.next() else { break };
            if row.len() <= self.cfg.limits.max_line_bytes {
                bytes += row.len();
                if count_quotes {
                    quotes += memchr::memchr_iter(b'"', &row).count();
                }
            }
            buf.extend_from_slice(&row);
            buf.push(b'\n');
            rows += 1;
        }
        if rows == 0 {
            return None;
        }
        let (lines, range) = (
            (self.next_line, self.next_line + rows as u64 - 1),
            (0, buf.len()),
        );
        self.pulled.insert(self.next_index, buf);
        self.next_line += rows as u64;
        Some(self.next_plan(rows, (bytes, quotes), lines, 0, range))
    }

    /// The plan of the next batch, `rows` rows from the current one on;
    /// advances the row and batch counters.
    fn next_plan(
        &mut self,
        rows: usize,
        (bytes, quotes): (usize, usize),
        lines: (u64, u64),
        blank_lines: u64,
        range: (usize, usize),
    ) -> BatchPlan {
        let plan = BatchPlan {
            index: self.next_index,
            first_row: self.next_row,
            rows,
            bytes,
            quotes,
            lines,
            blank_lines,
            range,
        };
        self.next_row += rows as u64;
        self.next_index += 1;
        plan
    }

    fn cut(&mut self) -> Option<BatchPlan> {
        if self.feed.is_some() {
            return self.cut_feed();
        }
        let mut lines = Lines::new(self.input.bytes(), self.pos, self.next_line);
        let (first_pos, first_line) = (self.pos, self.next_line);
        let (mut rows, mut bytes, mut blank, mut last) = (0usize, 0usize, 0u64, first_line);
        let (count_quotes, mut quotes) = (self.cfg.schema.has_lists(), 0usize);
        while rows < self.cfg.batch_size {
            let Some(line) = lines.next() else { break };
            last = line.number;
            if line.is_blank() {
                blank += 1;
                continue;
            }
            rows += 1;
            if line.bytes.len() <= self.cfg.limits.max_line_bytes {
                bytes += line.bytes.len();
                if count_quotes {
                    quotes += memchr::memchr_iter(b'"', line.bytes).count();
                }
            }
        }
        // Blank lines after the last row make no batch of their own: the
        // batch count is the row count over the batch size, which workers
        // and `stook merge` rely on.
        if rows == 0 {
            return None;
        }
        self.pos = lines.position();
        self.next_line = lines.next_number();
        let range = (first_pos, self.pos);
        Some(self.next_plan(rows, (bytes, quotes), (first_line, last), blank, range))
    }

    fn produce(
        &mut self,
        plan: BatchPlan,
        reservation: crate::store::Reservation,
    ) -> Result<InputBatch, PipelineError> {
        let (a, b) = plan.range;
        let mut good = Vec::with_capacity(plan.rows);
        let mut errors = Vec::new();
        let mut row = plan.first_row;
        let pulled = self.pulled.remove(&plan.index);
        let data = match &pulled {
            Some(buf) => &buf[..],
            None => &self.input.bytes()[..b],
        };
        for line in Lines::new(data, a, plan.lines.0) {
            if line.is_blank() {
                continue;
            }
            match check_row(&line, &self.cfg.schema, &self.cfg.limits) {
                Ok(parsed) => good.push((row, line.number, parsed)),
                Err(p) => {
                    let e = row_error(&self.input.shown, &line, row, p);
                    if !self.cfg.skip_bad_rows {
                        return Err(PipelineError::Row(Box::new(e)));
                    }
                    errors.push(e);
                }
            }
            row += 1;
        }
        let rows = good.len();
        let object = if good.is_empty() {
            None
        } else {
            Some(encode_input(&self.cfg.schema, &good, reservation)?)
        };
        drop(good);
        // Everything before this batch's end is done with; whole pages go.
        self.input.release(self.released, b);
        self.released = b / 4096 * 4096;
        Ok(InputBatch {
            plan,
            object,
            rows,
            errors,
        })
    }
}

impl Actor for Source {
    type Context = Context<Self>;
}

impl Handler<PlanBatch> for Source {
    type Result = Result<Option<BatchPlan>, PipelineError>;

    fn handle(&mut self, _: PlanBatch, _: &mut Context<Self>) -> Self::Result {
        Ok(self.plan())
    }
}

impl Handler<ProduceBatch> for Source {
    type Result = Result<InputBatch, PipelineError>;

    fn handle(&mut self, msg: ProduceBatch, _: &mut Context<Self>) -> Self::Result {
        self.produce(msg.plan, msg.reservation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_only_at_line_ends() {
        let data = b"aaa\nbb\ncccc\nd";
        for n in 1..6 {
            let parts = split_at_lines(data, 0, n);
            assert_eq!(parts.first().unwrap().0, 0);
            assert_eq!(parts.last().unwrap().1, data.len());
            for w in parts.windows(2) {
                assert_eq!(w[0].1, w[1].0);
                assert_eq!(data[w[0].1 - 1], b'\n');
            }
        }
    }
}
