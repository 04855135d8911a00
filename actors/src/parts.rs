//! Part files in each output format, written under a temporary name and
//! renamed into place when complete (the Sink decides when).
//!
//! ```text
//!  jsonl    one result object per line, as the backend wrote it
//!  parquet  one row group per batch; typed columns when the backend declares
//!  arrow    them (an embedding: a fixed-size list of f32), else one "result"
//!           column of JSON text; zstd-compressed Parquet, uncompressed Arrow
//!           IPC file (memory-mappable by readers)
//! ```
//!
//! Typed columns are read back from the results' JSON by arrow-json against
//! the declared schema, so a value that does not fit is an error naming the
//! part and the row, never a silent null.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, RecordBatch, UInt64Array};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::batch::OutputBatch;

/// The formats stook writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// JSON Lines.
    #[default]
    Jsonl,
    /// Parquet.
    Parquet,
    /// Arrow IPC file format.
    Arrow,
}

impl OutputFormat {
    /// Every format's name, as `output.format` takes it.
    pub const NAMES: &'static str = "jsonl, parquet, arrow";

    /// The format named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "jsonl" => OutputFormat::Jsonl,
            "parquet" => OutputFormat::Parquet,
            "arrow" | "feather" => OutputFormat::Arrow,
            _ => return None,
        })
    }

    /// The name, and the part files' extension.
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Jsonl => "jsonl",
            OutputFormat::Parquet => "parquet",
            OutputFormat::Arrow => "arrow",
        }
    }
}

/// The columns of a table part: the backend's declared schema, or one
/// `result` column of JSON text; led by `_row` when order is not kept.
pub fn table_schema(declared: Option<&Schema>, with_row: bool) -> SchemaRef {
    let mut fields: Vec<Field> = Vec::new();
    if with_row {
        fields.push(Field::new("_row", DataType::UInt64, false));
    }
    match declared {
        Some(s) => fields.extend(s.fields().iter().map(|f| f.as_ref().clone())),
        None => fields.push(Field::new("result", DataType::Utf8, false)),
    }
    Arc::new(Schema::new(fields))
}

/// A file being written under a temporary name, counting bytes and CRC.
pub struct TempFile {
    tmp: PathBuf,
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl TempFile {
    /// Creates `dir/.name.tmp`.
    pub fn create(dir: &Path, name: &str) -> std::io::Result<Self> {
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = File::create(&tmp)?;
        Ok(TempFile {
            tmp,
            out: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        })
    }

    /// Flushes, syncs and renames to `dir/name`; returns (bytes, crc32).
    pub fn commit(self, dir: &Path, name: &str) -> std::io::Result<(u64, u32)> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.tmp, dir.join(name))?;
        Ok((self.bytes, self.crc.finalize()))
    }

    /// Removes the temporary file.
    pub fn discard(self) {
        drop(self.out);
        let _ = std::fs::remove_file(&self.tmp);
    }
}

impl Write for TempFile {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(data)?;
        self.crc.update(&data[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// One part file being written.
pub enum PartWriter {
    /// JSON Lines.
    Jsonl(TempFile, Vec<u8>),
    /// Parquet, one row group per batch.
    Parquet(Box<ArrowWriter<TempFile>>, SchemaRef),
    /// Arrow IPC file, one record batch per batch.
    Arrow(Box<arrow_ipc::writer::FileWriter<TempFile>>, SchemaRef),
}

impl PartWriter {
    /// Starts `dir/.name.tmp` in `format`, with `schema` for a table.
    pub fn create(
        dir: &Path,
        name: &str,
        format: OutputFormat,
        schema: &SchemaRef,
    ) -> std::io::Result<Self> {
        let file = TempFile::create(dir, name)?;
        Ok(match format {
            OutputFormat::Jsonl => PartWriter::Jsonl(file, Vec::new()),
            OutputFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                let w =
                    ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(io_error)?;
                PartWriter::Parquet(Box::new(w), schema.clone())
            }
            OutputFormat::Arrow => {
                let w = arrow_ipc::writer::FileWriter::try_new(file, schema).map_err(io_error)?;
                PartWriter::Arrow(Box::new(w), schema.clone())
            }
        })
    }

    /// Writes a batch's results in input order (`with_row`: each led by
    /// its input row number); returns the rows written.
    pub fn write(&mut self, out: &OutputBatch, with_row: bool) -> std::io::Result<u64> {
        match self {
            PartWriter::Jsonl(file, line) => {
                for i in 0..out.len() {
                    let (row, json) = out.get(i);
                    line.clear();
                    if with_row {
                        with_row_number(line, row, json);
                    } else {
                        line.extend_from_slice(json.as_bytes());
                    }
                    line.push(b'\n');
                    file.write_all(line)?;
                }
            }
            PartWriter::Parquet(w, schema) => {
                let batch = to_table(out, schema, with_row).map_err(io_error)?;
                w.write(&batch).map_err(io_error)?;
                // One row group per batch.
                w.flush().map_err(io_error)?;
            }
            PartWriter::Arrow(w, schema) => {
                let batch = to_table(out, schema, with_row).map_err(io_error)?;
                w.write(&batch).map_err(io_error)?;
            }
        }
        Ok(out.len() as u64)
    }

    /// Finishes the file (footers) and renames it into place; returns
    /// (bytes, crc32).
    pub fn commit(self, dir: &Path, name: &str) -> std::io::Result<(u64, u32)> {
        let file = match self {
            PartWriter::Jsonl(f, _) => f,
            PartWriter::Parquet(w, _) => w.into_inner().map_err(io_error)?,
            PartWriter::Arrow(mut w, _) => {
                w.finish().map_err(io_error)?;
                w.into_inner().map_err(io_error)?
            }
        };
        file.commit(dir, name)
    }

    /// Removes the temporary file, unfinished.
    pub fn discard(self) {
        let tmp = match &self {
            PartWriter::Jsonl(f, _) => f.tmp.clone(),
            PartWriter::Parquet(w, _) => w.inner().tmp.clone(),
            PartWriter::Arrow(w, _) => w.get_ref().tmp.clone(),
        };
        drop(self);
        let _ = std::fs::remove_file(tmp);
    }
}

/// A batch of results as a record batch of `schema`.
fn to_table(
    out: &OutputBatch,
    schema: &SchemaRef,
    with_row: bool,
) -> Result<RecordBatch, ArrowError> {
    let rows: ArrayRef = Arc::new(UInt64Array::from_iter_values(
        (0..out.len()).map(|i| out.get(i).0),
    ));
    let result_only = schema.fields().len() == 1 + usize::from(with_row)
        && schema.field(usize::from(with_row)).name() == "result"
        && schema.field(usize::from(with_row)).data_type() == &DataType::Utf8;
    let mut cols: Vec<ArrayRef> = Vec::new();
    if with_row {
        cols.push(rows);
    }
    if result_only {
        let mut b = StringBuilder::new();
        for i in 0..out.len() {
            b.append_value(out.get(i).1);
        }
        cols.push(Arc::new(b.finish()));
        return RecordBatch::try_new(schema.clone(), cols);
    }
    let declared = Arc::new(Schema::new(
        schema.fields()[usize::from(with_row)..].to_vec(),
    ));
    let mut decoder = arrow_json::ReaderBuilder::new(declared)
        .with_batch_size(out.len().max(1))
        .with_coerce_primitive(true)
        .build_decoder()?;
    for i in 0..out.len() {
        let (row, json) = out.get(i);
        let mut text = json.as_bytes();
        while !text.is_empty() {
            let n = decoder.decode(text).map_err(|e| {
                ArrowError::JsonError(format!("the result of input row {row}: {e}"))
            })?;
            text = &text[n..];
        }
        // Results are whole objects; a newline ends each for the decoder.
        decoder.decode(b"\n")?;
    }
    let decoded = decoder
        .flush()?
        .ok_or_else(|| ArrowError::JsonError("no results decoded".into()))?;
    if decoded.num_rows() != out.len() {
        return Err(ArrowError::JsonError(format!(
            "{} results decoded from {}",
            decoded.num_rows(),
            out.len()
        )));
    }
    cols.extend(decoded.columns().iter().cloned());
    RecordBatch::try_new(schema.clone(), cols)
}

/// `{"_row":N,` followed by the rest of the result object.
pub fn with_row_number(line: &mut Vec<u8>, row: u64, json: &str) {
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
