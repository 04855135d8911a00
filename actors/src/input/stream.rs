//! Compressed JSON Lines (gzip, zstd), and any JSON Lines in object
//! storage: read as a stream, never whole. Lines are numbered as in the uncompressed text, a line longer
//! than the limit is skipped over without being held (its first bytes are
//! kept for the message), and a damaged or truncated stream stops the
//! reader with an error that names the file and the line it reached.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::PipelineError;
use crate::input::jsonl::{read_row, row_error, RowLimits, Validation};
use crate::input::InputFormat;
use crate::rows::{Line, RequestSchema};

/// A compressed JSON Lines file, or a JSON Lines object in a bucket.
pub struct StreamFile {
    path: PathBuf,
    shown: Arc<str>,
    format: InputFormat,
}

impl StreamFile {
    /// Checks that `path` opens and starts as `format` says.
    pub fn open(path: &Path, format: InputFormat) -> Result<Self, PipelineError> {
        let f = StreamFile {
            path: path.to_path_buf(),
            shown: path.display().to_string().into(),
            format,
        };
        // Reading the first line finds a wrong format or a missing file now.
        let mut lines = f.lines()?;
        let mut buf = Vec::new();
        lines.next_line(&mut buf, 1 << 16)?;
        Ok(f)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as shown in messages.
    pub fn shown(&self) -> Arc<str> {
        self.shown.clone()
    }

    /// A reader of the file's lines from the start.
    pub fn lines(&self) -> Result<StreamLines, PipelineError> {
        let file = crate::remote::open_read(&self.path).map_err(|e| self.error(e))?;
        let inner: Box<dyn Read + Send> = match self.format {
            InputFormat::JsonlZst => {
                Box::new(zstd::stream::read::Decoder::new(file).map_err(|e| self.error(e))?)
            }
            InputFormat::JsonlGz => Box::new(flate2::read::MultiGzDecoder::new(file)),
            // Plain JSON Lines read as a stream: an object in a bucket.
            _ => file,
        };
        Ok(StreamLines {
            reader: BufReader::with_capacity(1 << 20, inner),
            path: self.path.clone(),
            codec: match self.format {
                InputFormat::JsonlZst => "zstd",
                InputFormat::JsonlGz => "gzip",
                _ => "JSON Lines",
            },
            next_number: 1,
        })
    }

    fn error(&self, e: std::io::Error) -> PipelineError {
        PipelineError::Input {
            path: self.path.clone(),
            source: e,
        }
    }

    /// Checks every row (one thread: a stream has one reader), keeping at
    /// most `keep` errors.
    pub fn validate(
        &self,
        schema: &RequestSchema,
        limits: &RowLimits,
        keep: usize,
    ) -> Result<Validation, PipelineError> {
        let mut v = Validation::default();
        let mut lines = self.lines()?;
        let mut buf = Vec::new();
        let cap = limits.max_line_bytes + 1;
        while let Some((number, len)) = lines.next_line(&mut buf, cap)? {
            v.lines += 1;
            let line = Line {
                number,
                offset: 0,
                bytes: &buf,
            };
            if line.is_blank() {
                v.blank_lines += 1;
                continue;
            }
            if let Err(p) = read_row(&line, len, schema, limits) {
                v.error_count += 1;
                if v.errors.len() < keep {
                    v.errors.push(row_error(&self.shown, &line, v.rows, p));
                }
            }
            v.rows += 1;
        }
        Ok(v)
    }

    /// Rows (non-blank lines): the stream is read through once. Lines are
    /// held as the Source holds them (up to the limit), so both agree on
    /// which are blank.
    pub fn count_rows(&self, limits: &RowLimits) -> Result<u64, PipelineError> {
        let mut lines = self.lines()?;
        let (mut buf, mut rows) = (Vec::new(), 0);
        while lines
            .next_line(&mut buf, limits.max_line_bytes + 1)?
            .is_some()
        {
            if !crate::rows::is_blank(&buf) {
                rows += 1;
            }
        }
        Ok(rows)
    }
}

/// The lines of a decompressed stream.
pub struct StreamLines {
    reader: BufReader<Box<dyn Read + Send>>,
    path: PathBuf,
    codec: &'static str,
    next_number: u64,
}

impl StreamLines {
    /// The number the next line will have.
    pub fn next_number(&self) -> u64 {
        self.next_number
    }

    /// Reads the next line into `buf` (replacing its contents; without the
    /// `\n`, a final `\r` or, on line 1, a byte order mark), keeping at most
    /// `cap` bytes of it. Returns its number and full length, or `None` at
    /// the end.
    pub fn next_line(
        &mut self,
        buf: &mut Vec<u8>,
        cap: usize,
    ) -> Result<Option<(u64, usize)>, PipelineError> {
        buf.clear();
        if self.next_number == 1 {
            self.skip_bom()?;
        }
        let (mut len, mut ended, mut any, mut last) = (0usize, false, false, 0u8);
        while !ended {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(e) => return Err(self.error(e)),
            };
            if chunk.is_empty() {
                break;
            }
            any = true;
            let (take, used) = match memchr::memchr(b'\n', chunk) {
                Some(i) => {
                    ended = true;
                    (i, i + 1)
                }
                None => (chunk.len(), chunk.len()),
            };
            let room = cap.saturating_sub(buf.len()).min(take);
            buf.extend_from_slice(&chunk[..room]);
            if take > 0 {
                last = chunk[take - 1];
            }
            len += take;
            self.reader.consume(used);
        }
        if !any {
            return Ok(None);
        }
        if last == b'\r' {
            if buf.len() == len {
                buf.pop();
            }
            len -= 1;
        }
        let number = self.next_number;
        self.next_number += 1;
        Ok(Some((number, len)))
    }

    /// Drops a UTF-8 byte order mark at the very start.
    fn skip_bom(&mut self) -> Result<(), PipelineError> {
        let bom = [0xEF, 0xBB, 0xBF];
        let head = match self.reader.fill_buf() {
            Ok(h) => h,
            Err(e) => return Err(self.error(e)),
        };
        if head.starts_with(&bom) {
            self.reader.consume(3);
        }
        Ok(())
    }

    fn error(&self, e: std::io::Error) -> PipelineError {
        let what = match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "the file ends early (truncated?)".to_string(),
            _ => e.to_string(),
        };
        PipelineError::Input {
            path: self.path.clone(),
            source: std::io::Error::new(
                e.kind(),
                format!(
                    "not readable as {} at line {}: {what}",
                    self.codec, self.next_number
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const LIMITS: RowLimits = RowLimits {
        max_line_bytes: 1 << 20,
    };

    fn gz(text: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn lines_are_numbered_capped_and_a_truncated_stream_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.jsonl.gz");
        let text = b"\xEF\xBB\xBF{\"a\":1}\r\n\n{\"b\":\"0123456789\"}\nlast";
        std::fs::write(&p, gz(text)).unwrap();
        let f = StreamFile::open(&p, InputFormat::JsonlGz).unwrap();
        let mut l = f.lines().unwrap();
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some((n, len)) = l.next_line(&mut buf, 8).unwrap() {
            got.push((n, len, String::from_utf8(buf.clone()).unwrap()));
        }
        assert_eq!(
            got,
            vec![
                (1, 7, "{\"a\":1}".into()),
                (2, 0, "".into()),
                (3, 18, "{\"b\":\"01".into()),
                (4, 4, "last".into()),
            ]
        );
        assert_eq!(f.count_rows(&LIMITS).unwrap(), 3);

        let whole = gz(&b"{\"a\":1}\n".repeat(100_000));
        std::fs::write(&p, &whole[..whole.len() / 2]).unwrap();
        let f = StreamFile::open(&p, InputFormat::JsonlGz).unwrap();
        let e = f.count_rows(&LIMITS).unwrap_err().to_string();
        assert!(
            e.contains("in.jsonl.gz: not readable as gzip at line"),
            "{e}"
        );
        assert!(e.contains("truncated"), "{e}");

        std::fs::write(&p, b"{\"a\":1}\n").unwrap();
        let e = StreamFile::open(&p, InputFormat::JsonlGz)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not readable as gzip at line 1"), "{e}");
    }
}
