//! The two kinds of object in the store, both Arrow IPC streams of one record
//! batch, and their size bounds (reservations are made from these before a
//! byte is written).
//!
//! - An input batch: `_row` (u64, row number), `_line` (u64, 1-based line),
//!   one Utf8 column per schema field (strings decoded, JSON values as text),
//!   `_raw` (the row's JSON text) when the schema keeps it, and `_problem`
//!   (why the line could not be read; null on good rows) when the schema
//!   answers bad rows.
//! - An output batch: see [`crate::results`].
//!
//! Decoding reads the arrays in place from the store's mapping: each array
//! holds a reference to its object, so the object lives while they do.

use std::sync::Arc;

use arrow_array::builder::{StringBuilder, UInt64Builder};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, StructArray, UInt64Array};
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

use crate::rows::{ParsedRow, RequestSchema};
use crate::store::{Holder, ObjectRef, Reservation};

const ROW: &str = "_row";
const LINE: &str = "_line";
const RAW: &str = "_raw";
const PROBLEM: &str = "_problem";

/// The Arrow schema of input batches for a request schema.
pub fn input_schema(schema: &RequestSchema) -> SchemaRef {
    let mut fields = vec![
        Field::new(ROW, DataType::UInt64, false),
        Field::new(LINE, DataType::UInt64, false),
    ];
    for f in &schema.fields {
        fields.push(Field::new(&f.name, DataType::Utf8, true));
    }
    if schema.keep_raw {
        fields.push(Field::new(RAW, DataType::Utf8, false));
    }
    if schema.answer_bad_rows {
        fields.push(Field::new(PROBLEM, DataType::Utf8, true));
    }
    Arc::new(Schema::new(fields))
}

/// An upper bound of the IPC stream size for `rows` rows with `u64_cols`
/// integer columns, `str_cols` string columns holding `str_bytes` in all.
pub fn ipc_bound(rows: usize, u64_cols: usize, str_cols: usize, str_bytes: usize) -> usize {
    let cols = u64_cols + str_cols;
    // schema and batch headers, continuation markers and end of stream
    let headers = 1024 + cols * 192;
    // validity bitmaps and padding of every buffer to 64 bytes
    let padding = cols * 3 * 64 + cols * rows.div_ceil(8);
    headers + padding + rows * (8 * u64_cols + 4 * str_cols) + 4 * str_cols + str_bytes
}

/// An upper bound of the IPC bytes of `array` (a table's rows as a
/// struct of typed columns, say), beyond what [`ipc_bound`] counts for one
/// column: its buffers' bytes for its rows, and for each array inside it
/// headers, padding, offsets and validity.
pub fn typed_room(array: &dyn Array) -> usize {
    let rows = array.len();
    let (children, names) = nested_arrays(array.data_type());
    let data = array.to_data();
    let bytes = data
        .get_slice_memory_size()
        .unwrap_or_else(|_| array.get_buffer_memory_size());
    bytes + 2 * names + (1 + children) * (256 + 3 * 64 + 8 * (rows + 1) + rows.div_ceil(8))
}

/// The arrays nested in a column of type `dt` (its children, theirs, …)
/// and the bytes of their names and metadata: what IPC headers and
/// buffers spend on them beyond the column itself.
pub(crate) fn nested_arrays(dt: &DataType) -> (usize, usize) {
    let children: Vec<&Field> = match dt {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => vec![f.as_ref()],
        DataType::Struct(fs) => fs.iter().map(|f| f.as_ref()).collect(),
        _ => Vec::new(),
    };
    children.iter().fold((0, 0), |(arrays, names), f| {
        let (a, n) = nested_arrays(f.data_type());
        (arrays + 1 + a, names + name_bytes(f) + n)
    })
}

/// The bytes of a field's name and metadata in an IPC schema, with room
/// for their framing.
pub(crate) fn name_bytes(f: &Field) -> usize {
    f.name().len()
        + f.metadata()
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>()
}

/// The bound for an input batch of `rows` rows spanning `line_bytes` bytes.
pub fn input_bound(schema: &RequestSchema, rows: usize, line_bytes: usize) -> usize {
    // Decoded strings are never longer than their JSON text, so the fields
    // together take at most the line's bytes, and `_raw` that again.
    let copies = usize::from(!schema.fields.is_empty()) + usize::from(schema.keep_raw);
    let answered = usize::from(schema.answer_bad_rows);
    let str_cols = schema.fields.len() + usize::from(schema.keep_raw) + answered;
    let problems = answered * rows * crate::rows::PROBLEM_BYTES;
    ipc_bound(rows, 2, str_cols, copies * line_bytes + problems)
}

fn options() -> Result<IpcWriteOptions, ArrowError> {
    IpcWriteOptions::try_new(64, false, arrow_ipc::MetadataVersion::V5)
}

pub(crate) fn write_object(
    batch: &RecordBatch,
    reservation: Reservation,
    holder: Holder,
) -> Result<ObjectRef, ArrowError> {
    let mut w =
        StreamWriter::try_new_with_options(reservation.writer(), &batch.schema(), options()?)?;
    w.write(batch)?;
    w.finish()?;
    Ok(w.into_inner()?.finish(holder))
}

/// Encodes parsed rows into `reservation` as an input object.
pub fn encode_input(
    schema: &RequestSchema,
    rows: &[(u64, u64, ParsedRow<'_>)],
    reservation: Reservation,
) -> Result<ObjectRef, ArrowError> {
    let n = rows.len();
    let mut row_col = UInt64Builder::with_capacity(n);
    let mut line_col = UInt64Builder::with_capacity(n);
    let mut fields: Vec<StringBuilder> =
        schema.fields.iter().map(|_| StringBuilder::new()).collect();
    let mut raw = StringBuilder::new();
    let mut problems = StringBuilder::new();
    for (row, line, parsed) in rows {
        row_col.append_value(*row);
        line_col.append_value(*line);
        for (b, v) in fields.iter_mut().zip(&parsed.values) {
            b.append_option(v.as_deref());
        }
        if schema.keep_raw {
            raw.append_value(parsed.raw);
        }
        problems.append_option(parsed.problem.as_deref());
    }
    let mut cols: Vec<ArrayRef> = vec![Arc::new(row_col.finish()), Arc::new(line_col.finish())];
    cols.extend(fields.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    if schema.keep_raw {
        cols.push(Arc::new(raw.finish()));
    }
    if schema.answer_bad_rows {
        cols.push(Arc::new(problems.finish()));
    }
    let batch = RecordBatch::try_new(input_schema(schema), cols)?;
    write_object(&batch, reservation, Holder::Source)
}

/// Encodes rows already in columns (a table's: one string column per
/// schema field, and when the schema keeps whole rows the row's columns as
/// one struct) into `reservation` as an input object. The columns are
/// written as they are.
pub fn encode_columns(
    schema: &RequestSchema,
    rows: ArrayRef,
    lines: ArrayRef,
    fields: Vec<ArrayRef>,
    raw: Option<ArrayRef>,
    reservation: Reservation,
) -> Result<ObjectRef, ArrowError> {
    let mut cols = vec![rows, lines];
    cols.extend(fields);
    let mut columns = input_schema(schema).fields().to_vec();
    if schema.keep_raw {
        let raw = raw.ok_or_else(|| ArrowError::SchemaError("the row is missing".into()))?;
        // A table's row: its columns, typed, as one struct.
        if let Some(last) = columns.last_mut() {
            *last = Arc::new(Field::new(RAW, raw.data_type().clone(), false));
        }
        cols.push(raw);
    }
    if schema.answer_bad_rows {
        cols.push(arrow_array::new_null_array(&DataType::Utf8, cols[0].len()));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(columns)), cols)?;
    write_object(&batch, reservation, Holder::Source)
}

/// Reads the one record batch of a store object (an Arrow IPC stream) in
/// place: its arrays keep a reference to the object.
pub fn decode_object(obj: &ObjectRef) -> Result<RecordBatch, ArrowError> {
    let mut buf = Buffer::from(obj.to_bytes());
    let mut decoder = StreamDecoder::new();
    while !buf.is_empty() {
        if let Some(batch) = decoder.decode(&mut buf)? {
            return Ok(batch);
        }
    }
    Err(ArrowError::IpcError("object holds no record batch".into()))
}

fn u64_col(batch: &RecordBatch, name: &str) -> Result<UInt64Array, ArrowError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        .cloned()
        .ok_or_else(|| ArrowError::SchemaError(format!("column {name} missing or not u64")))
}

fn str_col(batch: &RecordBatch, name: &str) -> Result<StringArray, ArrowError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .cloned()
        .ok_or_else(|| ArrowError::SchemaError(format!("column {name} missing or not utf8")))
}

/// A batch of requests as a backend sees it: columns read in place from the
/// object store.
pub struct RequestBatch {
    rows: UInt64Array,
    lines: UInt64Array,
    fields: Vec<StringArray>,
    raw: Option<ArrayRef>,
    problems: Option<StringArray>,
    input_key: Arc<str>,
    /// The object decoded, and the index in it of this batch's first row.
    object: Option<(ObjectRef, usize)>,
}

impl RequestBatch {
    /// Decodes an input object.
    pub fn decode(obj: &ObjectRef, schema: &RequestSchema) -> Result<Self, ArrowError> {
        let batch = decode_object(obj)?;
        let fields = schema
            .fields
            .iter()
            .map(|f| str_col(&batch, &f.name))
            .collect::<Result<_, _>>()?;
        Ok(RequestBatch {
            rows: u64_col(&batch, ROW)?,
            lines: u64_col(&batch, LINE)?,
            fields,
            raw: if schema.keep_raw {
                Some(
                    batch
                        .column_by_name(RAW)
                        .cloned()
                        .ok_or_else(|| ArrowError::SchemaError(format!("column {RAW} missing")))?,
                )
            } else {
                None
            },
            problems: if schema.answer_bad_rows {
                Some(str_col(&batch, PROBLEM)?)
            } else {
                None
            },
            input_key: Arc::from(""),
            object: Some((obj.clone(), 0)),
        })
    }

    /// The same batch, labelled with what identifies its input.
    pub fn with_input_key(mut self, key: Arc<str>) -> Self {
        self.input_key = key;
        self
    }

    /// What identifies the job's input by content (a hex digest; empty for
    /// rows from memory): with [`RequestBatch::row`], a name for each row
    /// that is the same on every run over the same input.
    pub fn input_key(&self) -> &str {
        &self.input_key
    }

    /// A sub-range of the batch (no copy).
    pub fn slice(&self, start: usize, len: usize) -> Self {
        let s = |a: &StringArray| a.slice(start, len);
        RequestBatch {
            rows: self.rows.slice(start, len),
            lines: self.lines.slice(start, len),
            fields: self.fields.iter().map(s).collect(),
            raw: self.raw.as_ref().map(|a| a.slice(start, len)),
            problems: self.problems.as_ref().map(s),
            input_key: self.input_key.clone(),
            object: self.object.as_ref().map(|(o, at)| (o.clone(), at + start)),
        }
    }

    /// The store object the batch was decoded from (an Arrow IPC stream of
    /// one record batch, in the store's shared region) and the index of
    /// the batch's first row among the object's rows: what a model in
    /// another process reads in place.
    pub fn object(&self) -> Option<(&ObjectRef, usize)> {
        self.object.as_ref().map(|(o, at)| (o, *at))
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The 0-based input row number of the `i`th row.
    pub fn row(&self, i: usize) -> u64 {
        self.rows.value(i)
    }

    /// The 1-based input line of the `i`th row.
    pub fn line(&self, i: usize) -> u64 {
        self.lines.value(i)
    }

    /// The value of schema field number `field` in row `i`: a decoded string
    /// for string fields, JSON text for JSON fields; `None` when absent.
    pub fn field(&self, field: usize, i: usize) -> Option<&str> {
        let col = &self.fields[field];
        col.is_valid(i).then(|| col.value(i))
    }

    /// Schema field number `field`'s column.
    pub fn field_array(&self, field: usize) -> &StringArray {
        &self.fields[field]
    }

    /// The rows' 0-based input row numbers.
    pub fn rows(&self) -> &UInt64Array {
        &self.rows
    }

    /// The row's JSON text, when the schema keeps whole rows and they came
    /// from JSON Lines.
    pub fn raw(&self, i: usize) -> Option<&str> {
        let raw = self.raw.as_ref()?.as_any().downcast_ref::<StringArray>()?;
        Some(raw.value(i))
    }

    /// Why row `i`'s line could not be read, where the schema answers bad
    /// rows and it could not (its fields are all absent then).
    pub fn problem(&self, i: usize) -> Option<&str> {
        let p = self.problems.as_ref()?;
        p.is_valid(i).then(|| p.value(i))
    }

    /// The rows' columns, typed, when the schema keeps whole rows and they
    /// came from a table (Parquet, Arrow).
    pub fn raw_columns(&self) -> Option<&StructArray> {
        self.raw.as_ref()?.as_any().downcast_ref::<StructArray>()
    }

    /// The total bytes of the row's JSON text (or columns), or of its
    /// field values.
    pub fn data_bytes(&self) -> usize {
        let f: usize = self.fields.iter().map(|c| c.value_data().len()).sum();
        f + self
            .raw
            .as_ref()
            .map_or(0, |c| c.to_data().get_slice_memory_size().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::{parse_row, FieldKind, FieldSpec};
    use crate::store::ObjectStore;

    fn schema(keep_raw: bool) -> RequestSchema {
        RequestSchema {
            fields: vec![FieldSpec {
                name: "text".into(),
                kind: FieldKind::String,
                required: false,
            }],
            keep_raw,
            ..RequestSchema::default()
        }
    }

    #[test]
    fn input_round_trips_within_its_bound_and_in_place() {
        let store = ObjectStore::new(1 << 20).unwrap();
        for keep_raw in [false, true] {
            let s = schema(keep_raw);
            for lines in [
                vec![r#"{}"#.to_string()],
                vec![r#"{"text":""}"#.to_string(); 9],
                (0..300)
                    .map(|i| format!(r#"{{"text":"r{i}\u00e9"}}"#))
                    .collect(),
            ] {
                let bytes: usize = lines.iter().map(|l| l.len()).sum();
                let rows: Vec<_> = lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (i as u64, i as u64 + 1, parse_row(l.as_bytes(), &s).unwrap()))
                    .collect();
                let bound = input_bound(&s, rows.len(), bytes);
                let res = store.try_reserve(bound).unwrap().unwrap();
                let obj = encode_input(&s, &rows, res).unwrap();
                assert!(obj.len() <= bound);
                let batch = RequestBatch::decode(&obj, &s).unwrap();
                assert_eq!(batch.len(), rows.len());
                assert_eq!(batch.line(0), 1);
                if keep_raw {
                    assert_eq!(batch.raw(0), Some(lines[0].as_str()));
                }
                // The decoded arrays pin the object: one more reference.
                assert!(obj.ref_count() >= 2);
                drop(batch);
                assert_eq!(obj.ref_count(), 1);
            }
        }
        assert_eq!(store.stats().objects, 0);
    }

    #[test]
    fn answered_bad_rows_carry_their_problem_within_the_bound() {
        use crate::rows::{ParsedRow, RowProblem};
        let store = ObjectStore::new(1 << 20).unwrap();
        let s = RequestSchema {
            answer_bad_rows: true,
            ..schema(false)
        };
        let long = RowProblem {
            column: Some(3),
            message: "é".repeat(1000),
        };
        let rows = vec![
            (0, 1, parse_row(br#"{"text":"a"}"#, &s).unwrap()),
            (1, 2, ParsedRow::answered(&s, 2, long)),
        ];
        let bound = input_bound(&s, rows.len(), 12 + 2);
        let obj = encode_input(&s, &rows, store.try_reserve(bound).unwrap().unwrap()).unwrap();
        assert!(obj.len() <= bound);
        let batch = RequestBatch::decode(&obj, &s).unwrap();
        assert_eq!((batch.field(0, 0), batch.problem(0)), (Some("a"), None));
        let p = batch.problem(1).unwrap();
        assert!(
            p.starts_with("line 2, column 3: éé") && p.ends_with('…'),
            "{p}"
        );
        assert!(p.len() <= crate::rows::PROBLEM_BYTES);
        assert_eq!(batch.field(0, 1), None);
    }
}
