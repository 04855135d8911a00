//! Part files in each output format, written under a temporary name and
//! renamed into place when complete (the Sink decides when).
//!
//! ```text
//!  jsonl    one result object per line
//!  parquet  one row group per batch; the backend's typed columns (an
//!  arrow    embedding: a fixed-size list of f32), else one "result" column of
//!           JSON text; zstd-compressed Parquet, uncompressed Arrow IPC file
//!           (memory-mappable by readers)
//! ```
//!
//! Results reach the Sink as typed columns: Parquet and Arrow parts get
//! them as they are; JSON Lines are encoded from them here, once
//! ([`crate::json_lines`]).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::checkpoint::AtomicFile;
use crate::json_lines::{self, LineEncoder};
use crate::results::{OutputBatch, RESULT, ROW};

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

/// The columns of a table part, from an output object's columns
/// ([`crate::results::OutputColumns::schema`]): `_row` only when order is
/// not kept (`with_row`), each passthrough column typed as in a table input
/// (`pass_types`, by name; else Utf8), JSON text as Utf8, JSONL-only
/// columns left out, stook's field metadata dropped.
pub fn table_schema(
    output: &Schema,
    pass_types: &[(String, DataType)],
    with_row: bool,
) -> SchemaRef {
    let fields: Vec<Field> = output
        .fields()
        .iter()
        .filter(|f| (with_row || f.name() != ROW) && !json_lines::is_jsonl_only(f))
        .map(|f| {
            let typed = pass_types
                .iter()
                .find(|(n, _)| n == f.name())
                .map(|(_, t)| t);
            let ty = match typed {
                Some(t) => t.clone(),
                None if json_lines::is_json_text(f) => DataType::Utf8,
                None => f.data_type().clone(),
            };
            Field::new(f.name(), ty, f.is_nullable() || typed.is_some())
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// One part file being written.
pub enum PartWriter {
    /// JSON Lines.
    Jsonl(AtomicFile, String),
    /// Parquet, one row group per batch.
    Parquet(Box<ArrowWriter<AtomicFile>>, SchemaRef),
    /// Arrow IPC file, one record batch per batch.
    Arrow(Box<arrow_ipc::writer::FileWriter<AtomicFile>>, SchemaRef),
}

impl PartWriter {
    /// Starts `dir/.name.tmp` in `format`, with `schema` for a table.
    pub fn create(
        dir: &Path,
        name: &str,
        format: OutputFormat,
        schema: &SchemaRef,
    ) -> std::io::Result<Self> {
        let file = AtomicFile::create(dir, name)?;
        Ok(match format {
            OutputFormat::Jsonl => PartWriter::Jsonl(file, String::new()),
            OutputFormat::Parquet => {
                let mut props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()));
                if schema.column_with_name(RESULT).is_some() {
                    // Whole JSON objects: rarely repeated, and their
                    // min / max say nothing; a dictionary and statistics
                    // would be work thrown away.
                    let col = ColumnPath::from(RESULT);
                    props = props
                        .set_column_dictionary_enabled(col.clone(), false)
                        .set_column_statistics_enabled(col, EnabledStatistics::None);
                }
                let props = props.build();
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
            PartWriter::Jsonl(file, text) => {
                text.clear();
                LineEncoder::new(out.batch().schema_ref(), with_row).write_batch(out.batch(), text);
                file.write_all(text.as_bytes())?;
            }
            PartWriter::Parquet(w, schema) => {
                let batch = json_lines::to_table(out.batch(), schema).map_err(io_error)?;
                w.write(&batch).map_err(io_error)?;
                // One row group per batch.
                w.flush().map_err(io_error)?;
            }
            PartWriter::Arrow(w, schema) => {
                let batch = json_lines::to_table(out.batch(), schema).map_err(io_error)?;
                w.write(&batch).map_err(io_error)?;
            }
        }
        Ok(out.len() as u64)
    }

    /// Finishes the file (footers) and renames it into place; returns
    /// (bytes, crc32).
    pub fn commit(self) -> std::io::Result<(u64, u32)> {
        let file = match self {
            PartWriter::Jsonl(f, _) => f,
            PartWriter::Parquet(w, _) => w.into_inner().map_err(io_error)?,
            PartWriter::Arrow(mut w, _) => {
                w.finish().map_err(io_error)?;
                w.into_inner().map_err(io_error)?
            }
        };
        file.commit()
    }

    /// Removes the temporary file, unfinished (as dropping it does).
    pub fn discard(self) {
        drop(self)
    }
}
