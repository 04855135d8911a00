//! The job's input, in any of the formats stook reads, behind one type the
//! Source and the runner use: open it, check every row, count rows.
//!
//! ```text
//!  .jsonl                 memory-mapped, lines sliced in place      (jsonl.rs)
//!  .jsonl.gz / .jsonl.zst decompressed as a stream, line by line    (stream.rs)
//!  .arrow / .feather      Arrow IPC file, memory-mapped, batches    (table.rs)
//!                         decoded in place
//!  .parquet (file or dir) read batch by batch, only the columns the (table.rs)
//!                         backend reads
//!  s3:// gs:// az://      the same formats from object storage:     (remote/)
//!                         JSON Lines as a stream of ranged GETs,
//!                         Parquet by footer and column-chunk ranges,
//!                         Arrow IPC by footer and record-batch ranges
//! ```

pub mod jsonl;
pub mod stream;
pub mod table;
mod unique;
mod watched;

use std::path::Path;

use crate::error::PipelineError;
use crate::rows::RequestSchema;

pub use jsonl::{InputFile, RowLimits, Validation};
pub use stream::StreamFile;
pub use table::TableFile;

/// The formats stook reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// JSON Lines, plain.
    Jsonl,
    /// JSON Lines, gzip-compressed.
    JsonlGz,
    /// JSON Lines, zstd-compressed.
    JsonlZst,
    /// Parquet: one file, or a directory of `.parquet` files.
    Parquet,
    /// Arrow IPC file format (Feather v2).
    Arrow,
}

impl InputFormat {
    /// Every format's name, as `input.format` takes it.
    pub const NAMES: &'static str = "jsonl, jsonl.gz, jsonl.zst, parquet, arrow";

    /// The format named `name` (as in `input.format`).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "jsonl" | "json" | "ndjson" => InputFormat::Jsonl,
            "jsonl.gz" | "gz" | "gzip" => InputFormat::JsonlGz,
            "jsonl.zst" | "zst" | "zstd" => InputFormat::JsonlZst,
            "parquet" => InputFormat::Parquet,
            "arrow" | "feather" | "ipc" => InputFormat::Arrow,
            _ => return None,
        })
    }

    /// The format a path's name says; a directory is Parquet; anything else
    /// is read as JSON Lines.
    pub fn of_path(path: &Path) -> Self {
        if crate::remote::is_dir(path) {
            return InputFormat::Parquet;
        }
        Self::of_name(&path.file_name().unwrap_or_default().to_string_lossy())
    }

    /// The format a file's name says (its extension; JSON Lines when none
    /// of stook's), without looking at the file.
    pub fn of_name(name: &str) -> Self {
        let name = name.to_ascii_lowercase();
        if name.ends_with(".gz") {
            InputFormat::JsonlGz
        } else if name.ends_with(".zst") || name.ends_with(".zstd") {
            InputFormat::JsonlZst
        } else if name.ends_with(".parquet") || name.ends_with(".pq") {
            InputFormat::Parquet
        } else if name.ends_with(".arrow") || name.ends_with(".feather") || name.ends_with(".ipc") {
            InputFormat::Arrow
        } else {
            InputFormat::Jsonl
        }
    }

    /// The name, as `input.format` takes it.
    pub fn name(self) -> &'static str {
        match self {
            InputFormat::Jsonl => "jsonl",
            InputFormat::JsonlGz => "jsonl.gz",
            InputFormat::JsonlZst => "jsonl.zst",
            InputFormat::Parquet => "parquet",
            InputFormat::Arrow => "arrow",
        }
    }
}

/// An opened input.
pub enum Input {
    /// A plain JSON Lines file, mapped.
    Mapped(InputFile),
    /// A compressed JSON Lines file, read as a stream.
    Stream(StreamFile),
    /// A Parquet or Arrow IPC file (or directory of Parquet files).
    Table(TableFile),
}

impl Input {
    /// Opens `path` as `format` (from its name when `None`); `columns`, when
    /// set, limits a table's columns to those (the backend's fields must be
    /// among them).
    pub fn open(
        path: &Path,
        format: Option<InputFormat>,
        columns: Option<&[String]>,
    ) -> Result<Self, PipelineError> {
        Ok(match format.unwrap_or_else(|| InputFormat::of_path(path)) {
            // An object is read by ranges, as a stream.
            InputFormat::Jsonl if crate::remote::is_url(path) => {
                Input::Stream(StreamFile::open(path, InputFormat::Jsonl)?)
            }
            InputFormat::Jsonl => Input::Mapped(InputFile::open(path)?),
            f @ (InputFormat::JsonlGz | InputFormat::JsonlZst) => {
                Input::Stream(StreamFile::open(path, f)?)
            }
            f @ (InputFormat::Parquet | InputFormat::Arrow) => {
                Input::Table(TableFile::open(path, f, columns)?)
            }
        })
    }

    /// The path as shown in messages.
    pub fn path(&self) -> &Path {
        match self {
            Input::Mapped(f) => f.path(),
            Input::Stream(f) => f.path(),
            Input::Table(f) => f.path(),
        }
    }

    /// Checks every row, and that the schema's unique field repeats on
    /// none, keeping at most `keep` errors (all are counted).
    pub fn validate(
        &self,
        schema: &RequestSchema,
        limits: &RowLimits,
        threads: usize,
        keep: usize,
    ) -> Result<Validation, PipelineError> {
        let mut v = match self {
            Input::Mapped(f) => f.validate(schema, limits, threads, keep),
            Input::Stream(f) => f.validate(schema, limits, keep)?,
            Input::Table(f) => f.validate(schema, limits, keep)?,
        };
        let repeated = unique::repeats(self, schema, limits, keep);
        // A mapped file that changed under both reads: nothing read counts.
        if let Input::Mapped(f) = self {
            f.check()?;
        }
        let (count, repeats) = repeated?;
        if count > 0 {
            v.error_count += count;
            v.errors.extend(repeats);
            v.errors.sort_by_key(|e| e.row);
            v.errors.truncate(keep);
        }
        Ok(v)
    }

    /// Rows in the input, counted without checking them (a table's from
    /// its metadata; a stream is read through once).
    /// A table's columns are checked against `schema` first.
    pub fn count_rows(
        &self,
        schema: &RequestSchema,
        limits: &RowLimits,
    ) -> Result<u64, PipelineError> {
        match self {
            Input::Mapped(f) => {
                let n = f.count_rows();
                f.check()?;
                Ok(n)
            }
            Input::Stream(f) => f.count_rows(limits),
            Input::Table(f) => {
                f.check_schema(schema)?;
                Ok(f.rows())
            }
        }
    }
}
