//! Reading a table front to back, a chunk of rows at a time, from Arrow
//! batches in place or a Parquet reader over the needed columns.

use std::fs::File;

use arrow_array::{ArrayRef, RecordBatch, UInt64Array};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use crate::error::PipelineError;
use crate::input::jsonl::RowLimits;
use crate::rows::{RequestSchema, RowError};

use super::convert::convert;
use super::{bad, guarded, io, Part, PartData, TableFile};

/// Reads a table front to back, a chunk of rows at a time.
pub struct TableReader {
    schema: RequestSchema,
    batch_size: usize,
    part: usize,
    row_in_part: u64,
    next_row: u64,
    cursor: Option<Cursor>,
}

pub(super) enum Cursor {
    Arrow {
        batch: usize,
        offset: usize,
        current: Option<RecordBatch>,
    },
    Parquet {
        reader: ParquetRecordBatchReader,
        left: Option<RecordBatch>,
    },
}

/// Rows of one file, as read.
pub(super) struct Piece {
    pub(super) part: usize,
    pub(super) row_in_part: u64,
    pub(super) batch: RecordBatch,
}

/// Rows converted for the object store: the good rows' columns, the bad
/// rows' errors.
pub struct Chunk {
    /// Rows read (good and bad).
    pub count: usize,
    /// Each good row's 0-based row number.
    pub rows: UInt64Array,
    /// Each good row's 1-based row within its file.
    pub lines: UInt64Array,
    /// One string column per schema field.
    pub fields: Vec<ArrayRef>,
    /// Each good row as a JSON object, when the schema keeps it.
    pub raw: Option<ArrayRef>,
    /// The bad rows.
    pub errors: Vec<RowError>,
    /// String bytes of the largest of fields (together) and raw.
    pub bytes: usize,
    /// `"` bytes in list fields.
    pub quotes: usize,
    /// The 1-based rows (within their files) of the first and last row.
    pub span: (u64, u64),
}

impl TableReader {
    pub(super) fn new(schema: &RequestSchema, batch_size: usize) -> Self {
        TableReader {
            schema: schema.clone(),
            batch_size: batch_size.max(1),
            part: 0,
            row_in_part: 0,
            next_row: 0,
            cursor: None,
        }
    }

    /// The next `n` rows (fewer at the end), converted; `None` after the
    /// last.
    pub fn next_chunk(
        &mut self,
        file: &TableFile,
        limits: &RowLimits,
        n: usize,
    ) -> Result<Option<Chunk>, PipelineError> {
        let first_row = self.next_row;
        let pieces = self.guarded_read(file, n)?;
        if pieces.is_empty() {
            return Ok(None);
        }
        let chunk = convert(file, &self.schema, limits, &pieces, first_row)?;
        // A mapped file that changed under the reader: nothing read is used.
        let mut parts: Vec<usize> = pieces.iter().map(|p| p.part).collect();
        parts.dedup();
        for p in parts {
            file.parts[p].check()?;
        }
        Ok(Some(chunk))
    }

    /// Reads past the next `n` rows (fewer at the end); returns how many.
    pub fn skip(&mut self, file: &TableFile, n: usize) -> Result<usize, PipelineError> {
        let pieces = self.guarded_read(file, n)?;
        Ok(pieces.iter().map(|p| p.batch.num_rows()).sum())
    }

    /// Drops the pages of Arrow batches before the reader's position from
    /// the resident set.
    pub fn release(&self, file: &TableFile) {
        let Some(Part {
            data:
                PartData::Arrow {
                    map: Some(map),
                    batches,
                    ..
                },
            ..
        }) = file.parts.get(self.part)
        else {
            return;
        };
        let Some(Cursor::Arrow { batch, .. }) = &self.cursor else {
            return;
        };
        // Past the last batch: all of it.
        let map = map.map();
        let from = batches.get(*batch).map_or(map.len(), |&(_, _, from)| from);
        let end = from / 4096 * 4096;
        if end > 0 {
            // SAFETY: read-only, file-backed; pages read again fault back in.
            let _ =
                unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, 0, end) };
        }
    }

    /// [`Self::read`], a decoder's panic an error naming the file.
    fn guarded_read(&mut self, file: &TableFile, n: usize) -> Result<Vec<Piece>, PipelineError> {
        let path = file.parts.get(self.part).map_or(&file.path, |p| &p.path);
        guarded(path, "reading its rows", || self.read(file, n))
    }

    fn read(&mut self, file: &TableFile, n: usize) -> Result<Vec<Piece>, PipelineError> {
        let mut pieces = Vec::new();
        let mut want = n;
        while want > 0 && self.part < file.parts.len() {
            let part = &file.parts[self.part];
            if self.cursor.is_none() {
                self.cursor = Some(self.open(file, part)?);
            }
            let got = match self.cursor.as_mut() {
                Some(Cursor::Arrow {
                    batch,
                    offset,
                    current,
                }) => {
                    if current.is_none() && *batch < part.batch_count() {
                        *current = Some(part.decode(*batch)?);
                    }
                    match current {
                        Some(b) => {
                            let k = want.min(b.num_rows() - *offset);
                            let slice = b.slice(*offset, k);
                            *offset += k;
                            if *offset >= b.num_rows() {
                                (*batch, *offset, *current) = (*batch + 1, 0, None);
                            }
                            Some(slice)
                        }
                        None => None,
                    }
                }
                Some(Cursor::Parquet { reader, left }) => {
                    let b = match left.take() {
                        Some(b) => Some(b),
                        None => reader
                            .next()
                            .transpose()
                            .map_err(|e| bad(&part.path, format!("reading Parquet: {e}")))?,
                    };
                    b.map(|b| {
                        if b.num_rows() > want {
                            *left = Some(b.slice(want, b.num_rows() - want));
                            b.slice(0, want)
                        } else {
                            b
                        }
                    })
                }
                None => None,
            };
            match got {
                Some(b) if b.num_rows() > 0 => {
                    let k = b.num_rows();
                    pieces.push(Piece {
                        part: self.part,
                        row_in_part: self.row_in_part,
                        batch: b,
                    });
                    self.row_in_part += k as u64;
                    self.next_row += k as u64;
                    want -= k;
                }
                Some(_) => {}
                None => {
                    if self.row_in_part != part.rows {
                        return Err(bad(
                            &part.path,
                            format!(
                                "the footer promises {} rows and {} were read",
                                part.rows, self.row_in_part
                            ),
                        ));
                    }
                    (self.part, self.row_in_part, self.cursor) = (self.part + 1, 0, None);
                }
            }
        }
        Ok(pieces)
    }

    fn open(&self, file: &TableFile, part: &Part) -> Result<Cursor, PipelineError> {
        Ok(match &part.data {
            PartData::Arrow { .. } => Cursor::Arrow {
                batch: 0,
                offset: 0,
                current: None,
            },
            PartData::Parquet { meta, object, .. } => {
                let cols = part.projection(&self.schema, file.columns.as_deref());
                let mask = ProjectionMask::roots(meta.parquet_schema(), cols);
                let built = match object {
                    Some(chunks) => ParquetRecordBatchReaderBuilder::new_with_metadata(
                        chunks.clone(),
                        meta.clone(),
                    )
                    .with_projection(mask)
                    .with_batch_size(self.batch_size)
                    .build(),
                    None => {
                        let f = File::open(&part.path).map_err(io(&part.path))?;
                        ParquetRecordBatchReaderBuilder::new_with_metadata(f, meta.clone())
                            .with_projection(mask)
                            .with_batch_size(self.batch_size)
                            .build()
                    }
                };
                let reader = built.map_err(|e| bad(&part.path, format!("reading Parquet: {e}")))?;
                Cursor::Parquet { reader, left: None }
            }
        })
    }
}
