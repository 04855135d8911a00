//! Columnar input: Arrow IPC files and Parquet files (one, or a directory
//! of them, read in name order as one table).
//!
//! ```text
//!  Arrow IPC  mmap ─▶ footer ─▶ record batches decoded in place (no copy; pages
//!                               dropped from the resident set once read); in
//!                               a bucket, each batch's block by a ranged GET
//!  Parquet    footer ─▶ a reader over the columns the backend reads, batch by
//!                       batch (one batch of rows decoded at a time)
//!  both       rows n..n+k ─▶ the backend's fields as the object store's columns:
//!             strings as they are (sliced, no copy), other values as JSON text,
//!             each row checked (null where required, wrong literal, too long)
//! ```
//!
//! Columns map to the backend's fields by name. A column the backend needs
//! that is missing or of a type it cannot read is refused when the file is
//! opened, naming the file, the column and its type; a bad value is a bad
//! row named by file, row (1-based within the file), row group and column.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_schema::{DataType, FieldRef, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};

use crate::error::PipelineError;
use crate::input::jsonl::{RowLimits, Validation};
use crate::input::watched::WatchedMap;
use crate::input::InputFormat;
use crate::rows::{FieldKind, RequestSchema};

mod convert;
mod reader;

pub use reader::{Chunk, TableReader};

/// A Parquet or Arrow IPC input: one file, or a directory of Parquet files.
pub struct TableFile {
    path: PathBuf,
    parts: Vec<Part>,
    rows: u64,
    columns: Option<Vec<String>>,
}

struct Part {
    path: PathBuf,
    shown: Arc<str>,
    rows: u64,
    schema: SchemaRef,
    data: PartData,
}

enum PartData {
    /// The mapping and its record batches: each one's block, rows and
    /// first byte (decoded when the reader reaches it).
    Arrow {
        map: Option<Arc<WatchedMap>>,
        bytes: ArrowBytes,
        decoder: Box<arrow_ipc::reader::FileDecoder>,
        batches: Vec<(arrow_ipc::Block, usize, usize)>,
    },
    /// The footer, read once; rows per row group; the object read by
    /// ranges when the file is in object storage.
    Parquet {
        meta: ArrowReaderMetadata,
        groups: Vec<u64>,
        object: Option<crate::remote::ObjectChunks>,
    },
}

/// An Arrow IPC file's bytes: mapped whole, or an object in a bucket read
/// a block (a record batch) at a time by ranged GETs.
enum ArrowBytes {
    Mapped(Buffer),
    Object(crate::remote::Location, usize),
}

impl ArrowBytes {
    fn len(&self) -> usize {
        match self {
            ArrowBytes::Mapped(b) => b.len(),
            ArrowBytes::Object(_, n) => *n,
        }
    }

    /// Bytes `from..from + len` (the caller checked they are inside).
    fn slice(&self, from: usize, len: usize) -> std::io::Result<Buffer> {
        match self {
            ArrowBytes::Mapped(b) => Ok(b.slice_with_length(from, len)),
            ArrowBytes::Object(loc, _) => {
                if len == 0 {
                    return Ok(Buffer::from(bytes::Bytes::new()));
                }
                Ok(Buffer::from(
                    loc.get_range(from as u64..(from + len) as u64)?,
                ))
            }
        }
    }
}

/// The mapping as the owner of an Arrow buffer.
struct Mapped(Arc<WatchedMap>);

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        self.0.map()
    }
}

/// The record batch header in a block's metadata (after its continuation
/// marker and length), if it parses.
fn batch_header(meta: &[u8]) -> Option<arrow_ipc::RecordBatch<'_>> {
    let message = match meta {
        [0xFF, 0xFF, 0xFF, 0xFF, _, _, _, _, rest @ ..] => rest,
        [_, _, _, _, rest @ ..] => rest,
        _ => return None,
    };
    arrow_ipc::root_as_message(message)
        .ok()?
        .header_as_record_batch()
}

fn bad(path: &Path, why: impl std::fmt::Display) -> PipelineError {
    PipelineError::Input {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string()),
    }
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs arrow's or parquet's decoding of untrusted bytes: both assert on
/// some corrupt files (a buffer sliced past its end, a negative column
/// offset), and such a panic becomes an error naming the file (`what` it
/// was doing). The panic's own message is not printed.
fn guarded<T>(
    path: &Path,
    what: &str,
    f: impl FnOnce() -> Result<T, PipelineError>,
) -> Result<T, PipelineError> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info)
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    out.unwrap_or_else(|_| Err(bad(path, format!("{what}: the file is corrupt"))))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PipelineError + '_ {
    move |source| PipelineError::Input {
        path: path.to_path_buf(),
        source,
    }
}

impl TableFile {
    /// Opens `path` (a file, or for Parquet a directory of `.parquet` files)
    /// and reads its footers; `columns` limits the columns read.
    pub fn open(
        path: &Path,
        format: InputFormat,
        columns: Option<&[String]>,
    ) -> Result<Self, PipelineError> {
        // A directory's (or a prefix's) files of the format, hidden and
        // `_` names (`_SUCCESS`, `_metadata`) left out.
        let wanted = |name: &str| {
            !name.starts_with(['.', '_'])
                && match format {
                    InputFormat::Arrow => InputFormat::of_name(name) == InputFormat::Arrow,
                    _ => name.ends_with(".parquet"),
                }
        };
        let files = if crate::remote::is_url(path) && crate::remote::is_dir(path) {
            let files = crate::remote::files_under(path, wanted).map_err(io(path))?;
            if files.is_empty() {
                return Err(bad(
                    path,
                    format!("the prefix holds no .{} object", format.name()),
                ));
            }
            files
        } else if path.is_dir() {
            let mut files = Vec::new();
            for e in std::fs::read_dir(path).map_err(io(path))? {
                let p = e.map_err(io(path))?.path();
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                if wanted(&name) && p.is_file() {
                    files.push(p);
                }
            }
            files.sort();
            if files.is_empty() {
                return Err(bad(
                    path,
                    format!("the directory holds no .{} file", format.name()),
                ));
            }
            files
        } else {
            vec![path.to_path_buf()]
        };
        let parts = files
            .iter()
            .map(|f| match format {
                InputFormat::Arrow => guarded(f, "reading its footer", || Part::arrow(f)),
                _ => guarded(f, "reading its footer", || Part::parquet(f)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(cols) = columns {
            for p in &parts {
                if let Some(c) = cols.iter().find(|c| p.schema.field_with_name(c).is_err()) {
                    return Err(bad(
                        &p.path,
                        format!(
                            "input.columns names {c:?}, which the file does not have (it has {})",
                            column_list(&p.schema)
                        ),
                    ));
                }
            }
        }
        Ok(TableFile {
            path: path.to_path_buf(),
            rows: parts.iter().map(|p| p.rows).sum(),
            parts,
            columns: columns.map(<[String]>::to_vec),
        })
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows in all files.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The columns of a row as a backend that keeps whole rows gets them
    /// (`input.columns` of them, in the first file's order).
    pub fn row_schema(&self) -> Option<SchemaRef> {
        let part = self.parts.first()?;
        let fields: Vec<FieldRef> = part
            .schema
            .fields()
            .iter()
            .filter(|f| self.columns.as_ref().is_none_or(|c| c.contains(f.name())))
            .cloned()
            .collect();
        Some(Arc::new(Schema::new(fields)))
    }

    /// The type of column `name` (in the first file).
    pub fn column_type(&self, name: &str) -> Option<DataType> {
        let part = self.parts.first()?;
        part.schema
            .field_with_name(name)
            .ok()
            .map(|f| f.data_type().clone())
    }

    /// Refuses a file without a column the backend requires, or with one
    /// of a type it cannot read.
    pub fn check_schema(&self, schema: &RequestSchema) -> Result<(), PipelineError> {
        for p in &self.parts {
            for f in &schema.fields {
                match p.schema.field_with_name(&f.name) {
                    Err(_) if f.required => {
                        return Err(bad(
                            &p.path,
                            format!(
                                "no column {:?}, which the backend requires ({}); the file has {}",
                                f.name,
                                f.kind.expected(),
                                column_list(&p.schema)
                            ),
                        ))
                    }
                    Err(_) => {}
                    Ok(col) => {
                        if !readable(f.kind, col.data_type()) {
                            return Err(bad(
                                &p.path,
                                format!(
                                    "column {:?} is of type {}, and the backend expects {} there",
                                    f.name,
                                    col.data_type(),
                                    f.kind.expected()
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A reader from the first row, of what `schema` reads (checked first
    /// with [`TableFile::check_schema`]).
    pub fn reader(&self, schema: &RequestSchema, batch_size: usize) -> TableReader {
        TableReader::new(schema, batch_size)
    }

    /// Checks every row, keeping at most `keep` errors.
    pub fn validate(
        &self,
        schema: &RequestSchema,
        limits: &RowLimits,
        keep: usize,
    ) -> Result<Validation, PipelineError> {
        self.check_schema(schema)?;
        let mut r = self.reader(schema, 8192);
        let mut v = Validation::default();
        while let Some(chunk) = r.next_chunk(self, limits, 8192)? {
            r.release(self);
            v.rows += chunk.count as u64;
            v.error_count += chunk.errors.len() as u64;
            let room = keep.saturating_sub(v.errors.len());
            v.errors.extend(chunk.errors.into_iter().take(room));
        }
        v.lines = v.rows;
        Ok(v)
    }
}

fn column_list(schema: &Schema) -> String {
    let names: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{:?}: {}", f.name(), f.data_type()))
        .collect();
    if names.is_empty() {
        "no columns".into()
    } else {
        names.join(", ")
    }
}

fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_string(v),
        _ => false,
    }
}

/// Whether a column of type `t` can hold a field of kind `kind`.
fn readable(kind: FieldKind, t: &DataType) -> bool {
    match kind {
        FieldKind::String | FieldKind::Literal(_) => is_string(t),
        FieldKind::Bool => t == &DataType::Boolean,
        FieldKind::StringList => match t {
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                is_string(f.data_type())
            }
            _ => false,
        },
        FieldKind::Json | FieldKind::Refused(_) => true,
    }
}

impl Part {
    /// Whether a mapped part's file is as it was when opened.
    fn check(&self) -> Result<(), PipelineError> {
        match &self.data {
            PartData::Arrow { map: Some(map), .. } => map.check(&self.path),
            PartData::Arrow { map: None, .. } => Ok(()),
            PartData::Parquet { .. } => Ok(()),
        }
    }

    fn arrow(path: &Path) -> Result<Self, PipelineError> {
        let (map, bytes) = if crate::remote::is_url(path) {
            let loc = crate::remote::Location::parse(path).map_err(io(path))?;
            let size = loc.head().map_err(io(path))?.size as usize;
            (None, ArrowBytes::Object(loc, size))
        } else {
            let file = File::open(path).map_err(io(path))?;
            let map = Arc::new(WatchedMap::new(file).map_err(io(path))?);
            let buffer = Buffer::from(bytes::Bytes::from_owner(Mapped(map.clone())));
            (Some(map), ArrowBytes::Mapped(buffer))
        };
        let read = |from: usize, len: usize| bytes.slice(from, len).map_err(io(path));
        let not = |why: String| {
            bad(
                path,
                format!("not an Arrow IPC file ({why}); stook reads the IPC file format (Feather v2), not the stream format"),
            )
        };
        let n = bytes.len();
        if n < 18 {
            return Err(not("no ARROW1 magic at both ends".into()));
        }
        let tail = read(n - 10, 10)?;
        if &tail[4..] != b"ARROW1" || &read(0, 6)?[..] != b"ARROW1" {
            return Err(not("no ARROW1 magic at both ends".into()));
        }
        let footer_len = arrow_ipc::reader::read_footer_length(
            tail[..].try_into().map_err(|_| not("short".into()))?,
        )
        .map_err(|e| not(e.to_string()))?;
        if footer_len > n - 10 {
            return Err(not("its footer is longer than the file".into()));
        }
        let footer_bytes = read(n - 10 - footer_len, footer_len)?;
        let footer = arrow_ipc::root_as_footer(&footer_bytes).map_err(|e| not(e.to_string()))?;
        let fb_schema = footer.schema().ok_or_else(|| not("no schema".into()))?;
        let schema = Arc::new(
            arrow_ipc::convert::try_fb_to_schema(fb_schema).map_err(|e| not(e.to_string()))?,
        );
        let mut decoder = arrow_ipc::reader::FileDecoder::new(schema.clone(), footer.version());
        let block_data = |b: &arrow_ipc::Block| {
            let (at, len) = (
                b.offset() as usize,
                b.bodyLength() as usize + b.metaDataLength() as usize,
            );
            if at.checked_add(len).is_none_or(|end| end > n) {
                return Err(not("a block lies past the end of the file".into()));
            }
            Ok((at, len))
        };
        for b in footer.dictionaries().iter().flatten() {
            let (at, len) = block_data(b)?;
            let data = read(at, len)?;
            decoder
                .read_dictionary(b, &data)
                .map_err(|e| not(e.to_string()))?;
        }
        // Rows per batch from each message's header alone (one small GET
        // each in a bucket): the bodies are read (and checked) when the
        // reader reaches them.
        let mut batches = Vec::new();
        for b in footer.recordBatches().iter().flatten() {
            let (from, _) = block_data(b)?;
            let meta_len = (b.metaDataLength().max(0) as usize).min(n - from);
            let rows = batch_header(&read(from, meta_len)?)
                .map(|h| h.length())
                .ok_or_else(|| not("a record batch header does not parse".into()))?;
            batches.push((*b, rows.max(0) as usize, from));
        }
        Ok(Part {
            path: path.to_path_buf(),
            shown: path.display().to_string().into(),
            rows: batches.iter().map(|(_, r, _)| *r as u64).sum(),
            schema,
            data: PartData::Arrow {
                map,
                bytes,
                decoder: Box::new(decoder),
                batches,
            },
        })
    }

    fn parquet(path: &Path) -> Result<Self, PipelineError> {
        let not_parquet = |e| bad(path, format!("not a readable Parquet file: {e}"));
        let (meta, object) = if crate::remote::is_url(path) {
            let loc = crate::remote::Location::parse(path).map_err(io(path))?;
            let size = loc.head().map_err(io(path))?.size;
            let chunks = crate::remote::ObjectChunks::new(loc, size);
            let meta = ArrowReaderMetadata::load(&chunks, ArrowReaderOptions::new())
                .map_err(not_parquet)?;
            (meta, Some(chunks))
        } else {
            let file = File::open(path).map_err(io(path))?;
            let meta =
                ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(not_parquet)?;
            (meta, None)
        };
        let groups: Vec<u64> = meta
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows().max(0) as u64)
            .collect();
        Ok(Part {
            path: path.to_path_buf(),
            shown: path.display().to_string().into(),
            rows: groups.iter().sum(),
            schema: meta.schema().clone(),
            data: PartData::Parquet {
                meta,
                groups,
                object,
            },
        })
    }

    /// Record batches in an Arrow part (0 for Parquet).
    fn batch_count(&self) -> usize {
        match &self.data {
            PartData::Arrow { batches, .. } => batches.len(),
            PartData::Parquet { .. } => 0,
        }
    }

    /// Decodes an Arrow part's record batch `i` in place (its arrays point
    /// into the mapping), checking it.
    fn decode(&self, i: usize) -> Result<RecordBatch, PipelineError> {
        let PartData::Arrow {
            bytes,
            decoder,
            batches,
            ..
        } = &self.data
        else {
            return Err(bad(&self.path, "internal: not an Arrow part"));
        };
        let (block, rows, from) = batches[i];
        let len = block.metaDataLength() as usize + block.bodyLength() as usize;
        // arrow-ipc slices each buffer out of the body as its header says
        // and panics past the end: a corrupt header is refused first.
        let meta_len = (block.metaDataLength().max(0) as usize).min(len);
        let body_len = (len - meta_len) as i64;
        let data = bytes.slice(from, len).map_err(io(&self.path))?;
        let inside = batch_header(&data[..meta_len]).is_some_and(|h| {
            h.buffers().is_some_and(|bufs| {
                bufs.iter().all(|b| {
                    b.offset() >= 0
                        && b.length() >= 0
                        && b.offset()
                            .checked_add(b.length())
                            .is_some_and(|end| end <= body_len)
                })
            })
        });
        if !inside {
            return Err(bad(
                &self.path,
                format!(
                    "record batch {i}: its header points outside its body (the file is corrupt)"
                ),
            ));
        }
        let b = guarded(
            &self.path,
            &format!("record batch {i} does not decode"),
            || {
                decoder
                    .read_record_batch(&block, &data)
                    .map_err(|e| bad(&self.path, format!("record batch {i}: {e}")))
            },
        )?
        .ok_or_else(|| bad(&self.path, format!("record batch {i} is missing")))?;
        if b.num_rows() != rows {
            return Err(bad(
                &self.path,
                format!(
                    "record batch {i} holds {} rows, its header says {rows}",
                    b.num_rows()
                ),
            ));
        }
        Ok(b)
    }

    /// Where row `r` (0-based in this file) is, in words.
    fn place(&self, r: u64) -> String {
        match &self.data {
            PartData::Parquet { groups, .. } => {
                let (mut g, mut start) = (0, 0);
                while g + 1 < groups.len() && start + groups[g] <= r {
                    start += groups[g];
                    g += 1;
                }
                format!("row {} (row group {g}, row {} in it)", r + 1, r - start + 1)
            }
            PartData::Arrow { .. } => format!("row {}", r + 1),
        }
    }

    /// The column names a reader of `schema` reads (in file order).
    fn projection(&self, schema: &RequestSchema, columns: Option<&[String]>) -> Vec<usize> {
        (0..self.schema.fields().len())
            .filter(|&i| {
                let name = self.schema.field(i).name();
                if schema.keep_raw {
                    columns.is_none_or(|c| c.contains(name))
                } else {
                    schema.fields.iter().any(|f| &f.name == name)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::{ArrayRef, Int64Array, StringArray};

    const LIMITS: RowLimits = RowLimits {
        max_line_bytes: 1 << 20,
    };

    /// Rows `ids` with texts "t{id}" (`None` texts where `null_at`).
    fn batch(ids: std::ops::Range<i64>, null_at: Option<i64>) -> RecordBatch {
        let texts: Vec<Option<String>> = ids
            .clone()
            .map(|i| (Some(i) != null_at).then(|| format!("t{i}")))
            .collect();
        RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from_iter_values(ids)) as ArrayRef,
            ),
            ("text", Arc::new(StringArray::from(texts)) as ArrayRef),
        ])
        .unwrap()
    }

    fn parquet(path: &Path, batches: &[RecordBatch], group_rows: usize) {
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(group_rows))
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            File::create(path).unwrap(),
            batches[0].schema(),
            Some(props),
        )
        .unwrap();
        for b in batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();
    }

    fn arrow(path: &Path, batches: &[RecordBatch]) {
        let mut w = arrow_ipc::writer::FileWriter::try_new(
            File::create(path).unwrap(),
            &batches[0].schema(),
        )
        .unwrap();
        for b in batches {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
    }

    /// Every chunk of `n` rows: (row numbers, rows within their file,
    /// texts, ids as JSON text, bad rows' (row, line, message)).
    #[allow(clippy::type_complexity)]
    fn chunks(
        file: &TableFile,
        n: usize,
    ) -> Vec<(
        Vec<u64>,
        Vec<u64>,
        Vec<String>,
        Vec<String>,
        Vec<(u64, u64, String)>,
    )> {
        let schema = RequestSchema::text_with_id("text", "id");
        file.check_schema(&schema).unwrap();
        let mut r = file.reader(&schema, n);
        let mut all = Vec::new();
        while let Some(c) = r.next_chunk(file, &LIMITS, n).unwrap() {
            let strings = |a: &ArrayRef| -> Vec<String> {
                a.as_string::<i32>()
                    .iter()
                    .map(|s| s.unwrap_or("∅").to_string())
                    .collect()
            };
            assert_eq!(c.count, c.rows.len() + c.errors.len());
            all.push((
                c.rows.values().to_vec(),
                c.lines.values().to_vec(),
                strings(&c.fields[0]),
                strings(&c.fields[1]),
                c.errors
                    .iter()
                    .map(|e| (e.row, e.line, e.message.clone()))
                    .collect(),
            ));
            r.release(file);
        }
        all
    }

    #[test]
    fn a_directory_of_parquet_files_reads_in_name_order_across_files_and_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        parquet(&dir.path().join("b.parquet"), &[batch(5..8, None)], 10);
        parquet(&dir.path().join("a.parquet"), &[batch(0..5, None)], 2);
        // Not the table's: hidden, underscored, other extensions.
        parquet(
            &dir.path().join("_meta.parquet"),
            &[batch(100..101, None)],
            2,
        );
        parquet(
            &dir.path().join(".tmp.parquet"),
            &[batch(100..101, None)],
            2,
        );
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let file = TableFile::open(dir.path(), InputFormat::Parquet, None).unwrap();
        assert_eq!(file.rows(), 8);
        let c = chunks(&file, 3);
        let rows: Vec<Vec<u64>> = c.iter().map(|c| c.0.clone()).collect();
        assert_eq!(rows, [vec![0, 1, 2], vec![3, 4, 5], vec![6, 7]]);
        let lines: Vec<Vec<u64>> = c.iter().map(|c| c.1.clone()).collect();
        assert_eq!(lines, [vec![1, 2, 3], vec![4, 5, 1], vec![2, 3]]);
        let texts: Vec<String> = c.iter().flat_map(|c| c.2.clone()).collect();
        assert_eq!(texts, (0..8).map(|i| format!("t{i}")).collect::<Vec<_>>());
        let ids: Vec<String> = c.iter().flat_map(|c| c.3.clone()).collect();
        assert_eq!(ids, (0..8).map(|i| i.to_string()).collect::<Vec<_>>());
    }

    #[test]
    fn an_arrow_file_of_several_batches_reads_like_the_same_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let (a, p) = (dir.path().join("t.arrow"), dir.path().join("t.parquet"));
        let batches = [batch(0..4, None), batch(4..5, None), batch(5..9, None)];
        arrow(&a, &batches);
        parquet(&p, &batches, 3);
        let a = TableFile::open(&a, InputFormat::Arrow, None).unwrap();
        let p = TableFile::open(&p, InputFormat::Parquet, None).unwrap();
        assert_eq!((a.rows(), p.rows()), (9, 9));
        for n in [1, 2, 4, 100] {
            assert_eq!(chunks(&a, n), chunks(&p, n), "chunks of {n}");
        }
        assert_eq!(chunks(&a, 4).len(), 3);
    }

    #[test]
    fn skip_passes_rows_and_the_next_chunk_numbers_on_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.arrow");
        arrow(&path, &[batch(0..3, None), batch(3..10, None)]);
        let file = TableFile::open(&path, InputFormat::Arrow, None).unwrap();
        let schema = RequestSchema::text_with_id("text", "id");
        let mut r = file.reader(&schema, 4);
        assert_eq!(r.skip(&file, 5).unwrap(), 5);
        let c = r.next_chunk(&file, &LIMITS, 4).unwrap().unwrap();
        assert_eq!(c.rows.values().to_vec(), [5, 6, 7, 8]);
        assert_eq!(c.span, (6, 9));
        assert_eq!(r.skip(&file, 100).unwrap(), 1);
        assert!(r.next_chunk(&file, &LIMITS, 4).unwrap().is_none());
    }

    #[test]
    fn a_null_required_text_is_a_bad_row_named_by_file_and_row_and_the_rest_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        parquet(&path, &[batch(0..6, Some(4))], 4);
        let file = TableFile::open(&path, InputFormat::Parquet, None).unwrap();
        let c = chunks(&file, 6);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, [0, 1, 2, 3, 5]);
        assert_eq!(c[0].1, [1, 2, 3, 4, 6]);
        let errors = &c[0].4;
        assert_eq!(errors.len(), 1);
        let (row, line, message) = &errors[0];
        assert_eq!((*row, *line), (4, 5));
        assert!(message.contains("\"text\""), "{message}");
    }

    #[test]
    fn missing_and_mistyped_columns_are_refused_naming_the_file_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        parquet(&path, &[batch(0..2, None)], 4);
        let e = TableFile::open(&path, InputFormat::Parquet, Some(&["nope".to_string()]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("t.parquet") && e.contains("\"nope\""), "{e}");
        let file = TableFile::open(&path, InputFormat::Parquet, None).unwrap();
        let e = file
            .check_schema(&RequestSchema::text_with_id("body", "id"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no column \"body\""), "{e}");
        let e = file
            .check_schema(&RequestSchema::text_with_id("id", "text"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("column \"id\" is of type Int64"), "{e}");
    }
}
