//! The Source: reads the input, cuts it into batches of rows, validates
//! every row against the backend's schema and encodes good rows into the
//! object store. It produces a batch only when the Scheduler hands it a
//! reservation, so backpressure lands here.
//!
//! ```text
//!   Scheduler ──PlanBatch──▶ Source ──▶ BatchPlan (extent, rows, bytes)
//!   Scheduler ──ProduceBatch{plan, reservation}──▶ Source ──▶ InputBatch{ObjectRef}
//! ```
//!
//! A plain JSON Lines input is never read into the heap: lines are slices
//! of the mapping, and a row exists in the heap only while its batch is
//! being encoded. Other inputs (a compressed stream, a table, rows from
//! memory) are read when a batch is planned and held until it is produced:
//! one batch, since the Scheduler plans the next only after producing.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use arrow_array::ArrayRef;

use crate::batch::{encode_columns, encode_input};
use crate::error::PipelineError;
use crate::input::jsonl::{read_row, row_error};
use crate::input::stream::StreamLines;
use crate::input::table::{Chunk, TableReader};
use crate::input::{Input, InputFile, TableFile};
use crate::messages::{BatchPlan, InputBatch, PlanBatch, ProduceBatch};
use crate::rows::{data_start, is_blank, Lines, RequestSchema};

pub use crate::input::{RowLimits, Validation};

/// What the Source needs to know.
pub(crate) struct SourceConfig {
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

/// Where the Source's rows come from.
enum Reader {
    /// A mapped JSON Lines file.
    Mapped(InputFile),
    /// Rows from memory.
    Feed(RowFeed),
    /// A compressed JSON Lines file.
    Stream(StreamLines),
    /// A Parquet or Arrow file.
    Table(TableFile, TableReader),
}

/// A planned batch's rows, read but not yet produced.
enum Pending {
    /// Lines (blank ones included, numbered from the plan's first line),
    /// and the full length of each line cut short for being too long.
    Lines {
        buf: Vec<u8>,
        long: Vec<(u64, usize)>,
    },
    /// A table's rows, converted.
    Table(Box<Chunk>),
}

/// The Source actor.
pub struct Source {
    reader: Reader,
    shown: Arc<str>,
    pending: BTreeMap<u64, Pending>,
    cfg: SourceConfig,
    pos: usize,
    next_line: u64,
    next_row: u64,
    next_index: u64,
    released: usize,
    failed: Option<PipelineError>,
}

impl Source {
    /// A Source over `input`, at its first row.
    pub(crate) fn new(input: Input, cfg: SourceConfig) -> Self {
        let mut failed = None;
        let (reader, shown) = match input {
            Input::Mapped(f) => {
                let shown = f.shown();
                (Reader::Mapped(f), shown)
            }
            Input::Stream(f) => {
                let shown = f.shown();
                match f.lines() {
                    Ok(lines) => (Reader::Stream(lines), shown),
                    // Opened a moment ago: a failure now is reported by
                    // the first plan, as any read error is.
                    Err(e) => {
                        failed = Some(e);
                        (Reader::Feed(Box::new(std::iter::empty())), shown)
                    }
                }
            }
            Input::Table(t) => {
                let shown: Arc<str> = t.path().display().to_string().into();
                let r = t.reader(&cfg.schema, cfg.batch_size);
                (Reader::Table(t, r), shown)
            }
        };
        let pos = match &reader {
            Reader::Mapped(f) => data_start(f.bytes()),
            _ => 0,
        };
        Source {
            reader,
            shown,
            pending: BTreeMap::new(),
            cfg,
            pos,
            next_line: 1,
            next_row: 0,
            next_index: 0,
            released: 0,
            failed,
        }
    }

    /// The next batch not committed by an earlier run.
    fn plan(&mut self) -> Result<Option<BatchPlan>, PipelineError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        loop {
            let Some(plan) = self.cut()? else {
                return Ok(None);
            };
            if !self.cfg.todo.skips(plan.index) {
                return Ok(Some(plan));
            }
            self.pending.remove(&plan.index);
        }
    }

    /// A Source over rows from memory (`name` in messages); each row's
    /// "line" is its 1-based position.
    pub(crate) fn from_rows(name: &str, feed: RowFeed, cfg: SourceConfig) -> Self {
        let mut s = Source::new(Input::Mapped(InputFile::none(name)), cfg);
        s.reader = Reader::Feed(feed);
        s
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

    fn cut(&mut self) -> Result<Option<BatchPlan>, PipelineError> {
        match &mut self.reader {
            Reader::Mapped(_) => {
                let plan = self.cut_mapped();
                self.check_mapped()?;
                Ok(plan)
            }
            Reader::Feed(_) | Reader::Stream(_) => self.cut_lines(),
            Reader::Table(..) => self.cut_table(),
        }
    }

    /// Reads up to a batch of rows from the feed or the stream into a
    /// buffer of lines.
    fn cut_lines(&mut self) -> Result<Option<BatchPlan>, PipelineError> {
        let (mut buf, mut long) = (Vec::new(), Vec::new());
        let (mut rows, mut bytes, mut quotes, mut blank) = (0usize, 0usize, 0usize, 0u64);
        let count_quotes = self.cfg.schema.has_lists();
        let max = self.cfg.limits.max_line_bytes;
        let first_line = self.next_line;
        let mut line = Vec::new();
        while rows < self.cfg.batch_size {
            let len = match &mut self.reader {
                Reader::Feed(feed) => match feed.next() {
                    Some(row) => {
                        line = row;
                        line.len()
                    }
                    None => break,
                },
                Reader::Stream(lines) => match lines.next_line(&mut line, max + 1)? {
                    Some((_, len)) => len,
                    None => break,
                },
                _ => unreachable!("cut_lines reads a feed or a stream"),
            };
            if matches!(&self.reader, Reader::Stream(_)) && is_blank(&line) {
                blank += 1;
            } else {
                rows += 1;
                if len <= max {
                    bytes += len;
                    if count_quotes {
                        quotes += memchr::memchr_iter(b'"', &line).count();
                    }
                } else {
                    long.push((self.next_line, len));
                }
            }
            buf.extend_from_slice(&line);
            buf.push(b'\n');
            self.next_line += 1;
        }
        if rows == 0 {
            return Ok(None);
        }
        let range = (0, buf.len());
        self.pending
            .insert(self.next_index, Pending::Lines { buf, long });
        let lines = (first_line, self.next_line - 1);
        Ok(Some(self.next_plan(
            rows,
            (bytes, quotes),
            lines,
            blank,
            range,
        )))
    }

    /// Reads and converts up to a batch of a table's rows.
    fn cut_table(&mut self) -> Result<Option<BatchPlan>, PipelineError> {
        let Reader::Table(file, reader) = &mut self.reader else {
            unreachable!("cut_table reads a table")
        };
        if self.cfg.todo.skips(self.next_index) {
            // Not this run's: read past it without converting a row.
            let rows = reader.skip(file, self.cfg.batch_size)?;
            reader.release(file);
            return Ok((rows > 0).then(|| self.next_plan(rows, (0, 0), (0, 0), 0, (0, 0))));
        }
        let Some(chunk) = reader.next_chunk(file, &self.cfg.limits, self.cfg.batch_size)? else {
            return Ok(None);
        };
        reader.release(file);
        let (rows, amounts, lines) = (chunk.count, (chunk.bytes, chunk.quotes), chunk.span);
        self.pending
            .insert(self.next_index, Pending::Table(Box::new(chunk)));
        Ok(Some(self.next_plan(rows, amounts, lines, 0, (0, 0))))
    }

    /// Whether a mapped input is still as it was when opened (read
    /// bytes are used only after this).
    fn check_mapped(&self) -> Result<(), PipelineError> {
        match &self.reader {
            Reader::Mapped(input) => input.check(),
            _ => Ok(()),
        }
    }

    fn cut_mapped(&mut self) -> Option<BatchPlan> {
        let Reader::Mapped(input) = &self.reader else {
            return None;
        };
        let mut lines = Lines::new(input.bytes(), self.pos, self.next_line);
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
        let pending = self.pending.remove(&plan.index);
        if let Some(Pending::Table(chunk)) = pending {
            return self.produce_table(plan, *chunk, reservation);
        }
        let (a, b) = plan.range;
        let mut good = Vec::with_capacity(plan.rows);
        let mut errors = Vec::new();
        let mut row = plan.first_row;
        let (data, long) = match (&pending, &self.reader) {
            (Some(Pending::Lines { buf, long }), _) => (&buf[..], &long[..]),
            (_, Reader::Mapped(input)) => (&input.bytes()[..b], &[][..]),
            _ => (&[][..], &[][..]),
        };
        for line in Lines::new(data, a, plan.lines.0) {
            if line.is_blank() {
                continue;
            }
            let len = match long.iter().find(|(n, _)| *n == line.number) {
                Some(&(_, len)) => len,
                None => line.bytes.len(),
            };
            let checked = read_row(&line, len, &self.cfg.schema, &self.cfg.limits);
            match checked {
                Ok(parsed) => good.push((row, line.number, parsed)),
                Err(p) => {
                    let e = row_error(&self.shown, &line, row, p);
                    if !self.cfg.skip_bad_rows {
                        // A row spoilt by the file changing is that change.
                        self.check_mapped()?;
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
        self.check_mapped()?;
        // Everything before this batch's end is done with; whole pages go.
        if let Reader::Mapped(input) = &self.reader {
            input.release(self.released, b);
            self.released = b / 4096 * 4096;
        }
        Ok(InputBatch {
            plan,
            object,
            rows,
            errors,
        })
    }

    fn produce_table(
        &mut self,
        plan: BatchPlan,
        chunk: Chunk,
        reservation: crate::store::Reservation,
    ) -> Result<InputBatch, PipelineError> {
        if let (false, Some(e)) = (self.cfg.skip_bad_rows, chunk.errors.first()) {
            return Err(PipelineError::Row(Box::new(e.clone())));
        }
        let rows = chunk.rows.len();
        let object = if rows == 0 {
            None
        } else {
            Some(encode_columns(
                &self.cfg.schema,
                Arc::new(chunk.rows) as ArrayRef,
                Arc::new(chunk.lines) as ArrayRef,
                chunk.fields,
                chunk.raw,
                reservation,
            )?)
        };
        Ok(InputBatch {
            plan,
            object,
            rows,
            errors: chunk.errors,
        })
    }
}

impl Actor for Source {
    type Context = Context<Self>;
}

impl Handler<PlanBatch> for Source {
    type Result = Result<Option<BatchPlan>, PipelineError>;

    fn handle(&mut self, _: PlanBatch, _: &mut Context<Self>) -> Self::Result {
        self.plan()
    }
}

impl Handler<ProduceBatch> for Source {
    type Result = Result<InputBatch, PipelineError>;

    fn handle(&mut self, msg: ProduceBatch, _: &mut Context<Self>) -> Self::Result {
        self.produce(msg.plan, msg.reservation)
    }
}
