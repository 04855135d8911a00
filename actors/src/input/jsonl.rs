//! JSON Lines files, memory-mapped: the input is never read into the heap,
//! lines are slices of the mapping, and pages already read are dropped from
//! the resident set as the Source moves on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::watched::WatchedMap;
use crate::error::PipelineError;
use crate::rows::{
    data_start, excerpt, parse_row, Line, Lines, ParsedRow, RequestSchema, RowError, RowProblem,
};

/// A memory-mapped input file.
pub struct InputFile {
    path: PathBuf,
    shown: Arc<str>,
    map: Option<WatchedMap>,
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
        let map = if meta.len() == 0 {
            None
        } else {
            Some(WatchedMap::new(file).map_err(err)?)
        };
        if let Some(m) = map.as_ref().map(WatchedMap::map) {
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
        self.map.as_ref().map_or(&[], |m| m.map())
    }

    /// Whether the file is still as it was when opened; call it after
    /// reading bytes and before using them (see `watched.rs`).
    pub fn check(&self) -> Result<(), PipelineError> {
        self.map.as_ref().map_or(Ok(()), |m| m.check(&self.path))
    }

    /// Drops the mapping's pages in `[from, to)` from this process's
    /// resident set (whole pages only). The file's pages stay in the page
    /// cache; reading them again faults them back in. This keeps resident
    /// memory independent of input size.
    pub fn release(&self, from: usize, to: usize) {
        let Some(m) = self.map.as_ref().map(WatchedMap::map) else {
            return;
        };
        let page = 4096;
        let (a, b) = (from.div_ceil(page) * page, to.min(m.len()) / page * page);
        if b > a {
            // SAFETY: the mapping is read-only and file-backed; dropping its
            // pages only makes later reads fault them in from the file.
            let _ =
                unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a) };
        }
    }

    /// Rows (non-blank lines), counted without parsing them.
    pub fn count_rows(&self) -> u64 {
        let data = self.bytes();
        Lines::new(data, data_start(data), 1)
            .filter(|l| !l.is_blank())
            .count() as u64
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
            if let Err(e) = read_row(&line, line.bytes.len(), schema, limits) {
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
pub(crate) const RELEASE_EVERY: usize = 8 << 20;

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

/// A line read as a row: checked against the limits (`len` is its full
/// length, which may be more than the bytes held) and parsed against the
/// schema. Where the schema answers bad rows, a bad line is a row that
/// carries its problem instead of an error.
pub(crate) fn read_row<'a>(
    line: &Line<'a>,
    len: usize,
    schema: &RequestSchema,
    limits: &RowLimits,
) -> Result<ParsedRow<'a>, RowProblem> {
    let read = if len > limits.max_line_bytes {
        Err(too_long(len, limits))
    } else {
        parse_row(line.bytes, schema)
    };
    match read {
        Err(p) if schema.answer_bad_rows => Ok(ParsedRow::answered(schema, line.number, p)),
        r => r,
    }
}

/// A line of `len` bytes, over the limit.
fn too_long(len: usize, limits: &RowLimits) -> RowProblem {
    RowProblem {
        column: None,
        message: format!(
            "the line is {len} bytes long, more than input.max_line_bytes = {} bytes",
            limits.max_line_bytes
        ),
    }
}

pub(crate) fn row_error(path: &Arc<str>, line: &Line<'_>, row: u64, p: RowProblem) -> RowError {
    RowError {
        path: path.clone(),
        line: line.number,
        row,
        excerpt: excerpt(line.bytes, p.column),
        column: p.column,
        message: p.message,
        place: None,
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
