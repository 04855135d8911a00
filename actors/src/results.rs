//! Results as typed Arrow columns, from the backend to the part file.
//!
//! ```text
//!  Model::predict ──append(rows, columns)──▶ ResultWriter      (a backend with an output schema)
//!                 ──push(row, json)───────▶ ResultWriter      (one `result` column of JSON objects)
//!  BackendActor: _row + passthrough columns (taken from the input batch) + the results
//!               ──▶ one Arrow IPC object in room reserved from [`output_bound`]
//!  Sink: JSON Lines encoded from the columns (crate::json_lines), or the
//!        columns written as they are to Parquet / Arrow parts
//! ```
//!
//! An output object's columns are [`OutputColumns::schema`]: `_row` (u64,
//! the input row), the `[output] passthrough` columns (Utf8: a string
//! field's decoded text, any other value's JSON text), then the backend's.

use std::sync::Arc;

use arrow_array::builder::{StringBuilder, UInt64Builder};
use arrow_array::{Array, ArrayRef, RecordBatch, UInt64Array};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

use crate::batch::{decode_object, name_bytes, nested_arrays, write_object, RequestBatch};
use crate::json_lines::{with_meta, ENCODING, JSON_OBJECT, JSON_TEXT};
use crate::model::{Backend, ModelError};
use crate::rows::{FieldKind, RequestSchema};
use crate::store::{Holder, ObjectRef, Reservation};

/// The input row column of an output object.
pub const ROW: &str = "_row";
/// The one column of a backend without an output schema.
pub const RESULT: &str = "result";

/// The columns of a backend's results: its declared output schema, or one
/// `result` column of JSON objects.
pub fn result_columns(declared: Option<SchemaRef>) -> SchemaRef {
    declared.unwrap_or_else(|| {
        let f = Field::new(RESULT, DataType::Utf8, false);
        Arc::new(Schema::new(vec![with_meta(f, ENCODING, JSON_OBJECT)]))
    })
}

/// What an output object holds, worked out once per run from the backend
/// and `[output] passthrough`.
#[derive(Clone, Debug)]
pub struct OutputColumns {
    /// `_row`, the passthrough columns, the backend's result columns.
    pub schema: SchemaRef,
    /// The backend's result columns.
    pub results: SchemaRef,
    /// Whether the backend declared them (else one JSON `result` column).
    pub typed: bool,
    /// The request schema extended by the passthrough fields.
    pub request: RequestSchema,
    /// Each passthrough column's field index in `request`.
    pub passthrough: Vec<usize>,
}

impl OutputColumns {
    /// The output columns of `backend` with `passthrough` copied from the
    /// input; `table_rows`: the columns of a table input's rows
    /// ([`Backend::output_schema_for`]).
    pub fn new(
        backend: &dyn Backend,
        passthrough: &[String],
        table_rows: Option<&SchemaRef>,
    ) -> Self {
        let declared = backend.output_schema_for(table_rows);
        let typed = declared.is_some();
        let results = result_columns(declared);
        let (request, idx) = backend.schema().with_passthrough(passthrough);
        let mut fields = vec![Field::new(ROW, DataType::UInt64, false)];
        for (name, &i) in passthrough.iter().zip(&idx) {
            let f = Field::new(name, DataType::Utf8, true);
            fields.push(match request.fields[i].kind {
                FieldKind::String | FieldKind::Literal(_) => f,
                _ => with_meta(f, ENCODING, JSON_TEXT),
            });
        }
        fields.extend(results.fields().iter().map(|f| f.as_ref().clone()));
        OutputColumns {
            schema: Arc::new(Schema::new(fields)),
            results,
            typed,
            request,
            passthrough: idx,
        }
    }

    /// The first name both passed through and written by the backend
    /// (refused: a result cannot have two columns of one name).
    pub fn clash(&self) -> Option<&str> {
        let pass = &self.schema.fields()[1..1 + self.passthrough.len()];
        pass.iter()
            .map(|f| f.name().as_str())
            .find(|n| self.results.field_with_name(n).is_ok())
    }

    /// The passthrough columns for results of `rows` (a subsequence of the
    /// batch's rows, in its order: rows that failed alone are missing).
    pub fn passthrough_columns(
        &self,
        batch: &RequestBatch,
        rows: &UInt64Array,
    ) -> Result<Vec<ArrayRef>, ArrowError> {
        if self.passthrough.is_empty() {
            return Ok(Vec::new());
        }
        let all = rows.len() == batch.len();
        let mut take = Vec::with_capacity(rows.len());
        if !all {
            let mut i = 0;
            for row in rows.values() {
                while i < batch.len() && batch.row(i) != *row {
                    i += 1;
                }
                take.push(i.min(batch.len().saturating_sub(1)) as u32);
            }
        }
        let take = arrow_array::UInt32Array::from(take);
        self.passthrough
            .iter()
            .map(|&f| {
                let col: ArrayRef = Arc::new(batch.field_array(f).clone());
                if all {
                    Ok(col)
                } else {
                    arrow_select::take::take(col.as_ref(), &take, None)
                }
            })
            .collect()
    }
}

/// An upper bound of the IPC stream size of an output object of `schema`
/// with `rows` rows whose values take `data_bytes` (4 bytes an f32, a
/// string's bytes, JSON text's bytes): headers, offsets, validity bitmaps,
/// padding, and `_row`.
pub fn output_bound(schema: &Schema, rows: usize, data_bytes: usize) -> usize {
    let (mut arrays, mut names) = (0, 0);
    for f in schema.fields() {
        let (a, n) = nested_arrays(f.data_type());
        arrays += 1 + a;
        names += name_bytes(f) + n;
    }
    let headers = 1024 + arrays * 256 + 2 * names;
    // Per array: up to three buffers padded to 64 bytes, offsets, validity.
    let per_array = 3 * 64 + 4 * (rows + 1) + rows.div_ceil(8) + 8;
    // Nested values (a vector's floats) have validity bits of their own:
    // at most one byte in eight of their data.
    headers + arrays * per_array + 8 * rows + data_bytes + data_bytes / 8 + 64
}

/// Collects a backend's results and what it counts along the way.
///
/// A backend that declares an output schema ([`Backend::output_schema`])
/// appends typed columns ([`ResultWriter::append`]); one without pushes
/// each result as a JSON object ([`ResultWriter::push`],
/// [`ResultWriter::push_value`]).
pub struct ResultWriter {
    columns: SchemaRef,
    typed: bool,
    /// Results appended so far: (rows, columns of `columns`).
    chunks: Vec<(UInt64Array, Vec<ArrayRef>)>,
    rows: UInt64Builder,
    json: StringBuilder,
    pushed_to_typed: bool,
    counters: crate::messages::Counters,
}

impl Default for ResultWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ResultWriter {
    /// A writer of JSON objects, one `result` column.
    pub fn new() -> Self {
        Self::for_columns(result_columns(None), false)
    }

    /// A writer of `columns`: typed ones (appended), or the one `result`
    /// column of JSON objects (pushed).
    pub fn for_columns(columns: SchemaRef, typed: bool) -> Self {
        ResultWriter {
            columns,
            typed,
            chunks: Vec::new(),
            rows: UInt64Builder::new(),
            json: StringBuilder::new(),
            pushed_to_typed: false,
            counters: Default::default(),
        }
    }

    /// The columns results have.
    pub fn columns(&self) -> &SchemaRef {
        &self.columns
    }

    /// Adds the results for input rows `rows`: one array per output column,
    /// each `rows.len()` long, of the declared types.
    pub fn append(&mut self, rows: &UInt64Array, columns: Vec<ArrayRef>) -> Result<(), ModelError> {
        if !self.typed {
            return Err(ModelError::new(
                "internal: typed results from a backend that declares no output schema",
            ));
        }
        // Checks count, types, lengths and nullability.
        RecordBatch::try_new(self.columns.clone(), columns.clone())
            .and_then(|b| {
                if b.num_rows() == rows.len() {
                    Ok(())
                } else {
                    Err(ArrowError::InvalidArgumentError(format!(
                        "{} rows of results for {} row numbers",
                        b.num_rows(),
                        rows.len()
                    )))
                }
            })
            .map_err(|e| ModelError::new(format!("results do not fit the output schema: {e}")))?;
        self.flush_json();
        self.chunks.push((rows.clone(), columns));
        Ok(())
    }

    /// Adds the result for input row `row`, as the text of a JSON object.
    pub fn push(&mut self, row: u64, json: &str) {
        self.pushed_to_typed |= self.typed;
        self.rows.append_value(row);
        self.json.append_value(json);
    }

    /// Adds the result for input row `row`, a JSON object.
    pub fn push_value(&mut self, row: u64, value: &serde_json::Value) {
        self.push(row, &value.to_string());
    }

    /// Adds the result for input row `row`, written by `f` (no extra copy).
    pub fn push_with(
        &mut self,
        row: u64,
        f: impl FnOnce(&mut dyn std::fmt::Write) -> std::fmt::Result,
    ) -> std::fmt::Result {
        self.pushed_to_typed |= self.typed;
        self.rows.append_value(row);
        let r = f(&mut self.json);
        self.json.append_value("");
        r
    }

    fn flush_json(&mut self) {
        if !self.rows.values_slice().is_empty() {
            let rows = self.rows.finish();
            let json: ArrayRef = Arc::new(self.json.finish());
            self.chunks.push((rows, vec![json]));
        }
    }

    /// Adds `n` to the counter `name` (shown in the run report under
    /// `counters`: texts truncated, say).
    pub fn count(&mut self, name: &str, n: u64) {
        if n > 0 {
            *self.counters.entry(name.to_string()).or_default() += n;
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> &crate::messages::Counters {
        &self.counters
    }

    /// Puts the counters back as they were (a failed call's counts go).
    pub fn set_counters(&mut self, counters: crate::messages::Counters) {
        self.counters = counters;
    }

    /// Results so far.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(|(r, _)| r.len()).sum::<usize>() + self.rows.values_slice().len()
    }

    /// Whether no result was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every result from `len` on (used when a call fails midway).
    pub fn truncate(&mut self, len: usize) {
        self.flush_json();
        let mut kept = 0;
        self.chunks.retain_mut(|(rows, cols)| {
            let n = rows.len();
            let keep = len.saturating_sub(kept).min(n);
            kept += keep;
            if keep < n {
                *rows = rows.slice(0, keep);
                for c in cols.iter_mut() {
                    *c = c.slice(0, keep);
                }
            }
            keep > 0
        });
    }

    /// Every result, as (row numbers, one array per column).
    pub fn finish(mut self) -> Result<(UInt64Array, Vec<ArrayRef>), ArrowError> {
        if self.pushed_to_typed {
            return Err(ArrowError::InvalidArgumentError(
                "the backend declares an output schema but pushed JSON text; \
                 use ResultWriter::append"
                    .into(),
            ));
        }
        self.flush_json();
        if self.chunks.len() == 1 {
            if let Some(c) = self.chunks.pop() {
                return Ok(c);
            }
        }
        let rows: Vec<&dyn Array> = self.chunks.iter().map(|(r, _)| r as &dyn Array).collect();
        let rows = if rows.is_empty() {
            UInt64Array::from(Vec::<u64>::new())
        } else {
            let r = arrow_select::concat::concat(&rows)?;
            arrow_array::cast::AsArray::as_primitive::<arrow_array::types::UInt64Type>(&r).clone()
        };
        let cols = (0..self.columns.fields().len())
            .map(|c| {
                if self.chunks.is_empty() {
                    return Ok(arrow_array::new_empty_array(
                        self.columns.field(c).data_type(),
                    ));
                }
                let parts: Vec<&dyn Array> = self
                    .chunks
                    .iter()
                    .map(|(_, cols)| cols[c].as_ref())
                    .collect();
                arrow_select::concat::concat(&parts)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((rows, cols))
    }
}

/// Encodes an output object of `schema` (`_row`, then `columns`) into
/// `reservation`.
pub fn encode_output(
    schema: &SchemaRef,
    rows: UInt64Array,
    columns: Vec<ArrayRef>,
    reservation: Reservation,
) -> Result<ObjectRef, ArrowError> {
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(columns.len() + 1);
    cols.push(Arc::new(rows));
    cols.extend(columns);
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    write_object(&batch, reservation, Holder::InFlight)
}

/// An output object as the Sink reads it: its columns, in place in the
/// store.
pub struct OutputBatch {
    batch: RecordBatch,
    rows: UInt64Array,
}

impl OutputBatch {
    /// Decodes an output object.
    pub fn decode(obj: &ObjectRef) -> Result<Self, ArrowError> {
        let batch = decode_object(obj)?;
        let rows = batch
            .column_by_name(ROW)
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
            .cloned()
            .ok_or_else(|| ArrowError::SchemaError(format!("column {ROW} missing or not u64")))?;
        Ok(OutputBatch { batch, rows })
    }

    /// The columns, `_row` first.
    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The input row number of the `i`th result.
    pub fn row(&self, i: usize) -> u64 {
        self.rows.value(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_lines::LineEncoder;
    use crate::store::ObjectStore;
    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};

    #[test]
    fn json_results_round_trip_within_their_bound() {
        let store = ObjectStore::new(1 << 20).unwrap();
        let mut w = ResultWriter::new();
        let mut bytes = 0;
        for i in 0..100u64 {
            let json = format!("{{\"n\":{i}}}");
            bytes += json.len();
            w.push(i, &json);
        }
        let schema = Arc::new(Schema::new(
            std::iter::once(Field::new(ROW, DataType::UInt64, false))
                .chain(w.columns().fields().iter().map(|f| f.as_ref().clone()))
                .collect::<Vec<_>>(),
        ));
        let bound = output_bound(&schema, w.len(), bytes);
        let (rows, cols) = w.finish().unwrap();
        let obj = encode_output(
            &schema,
            rows,
            cols,
            store.try_reserve(bound).unwrap().unwrap(),
        )
        .unwrap();
        assert!(obj.len() <= bound);
        let out = OutputBatch::decode(&obj).unwrap();
        assert_eq!(out.row(42), 42);
        let mut text = String::new();
        LineEncoder::new(out.batch().schema_ref(), false).write_row(out.batch(), 42, &mut text);
        assert_eq!(text, "{\"n\":42}\n");
    }

    fn typed(dim: i32) -> SchemaRef {
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        Arc::new(Schema::new(vec![Field::new(
            "v",
            DataType::FixedSizeList(item, dim),
            false,
        )]))
    }

    fn vectors(rows: &[u64], dim: usize) -> Vec<ArrayRef> {
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let mut b = FixedSizeListBuilder::new(Float32Builder::new(), dim as i32).with_field(item);
        for &r in rows {
            for k in 0..dim {
                b.values().append_value(r as f32 + k as f32 / 8.0);
            }
            b.append(true);
        }
        vec![Arc::new(b.finish())]
    }

    #[test]
    fn typed_results_fit_four_bytes_a_float() {
        let store = ObjectStore::new(1 << 24).unwrap();
        for (rows, dim) in [(0usize, 4usize), (1, 384), (64, 384), (1000, 3)] {
            let mut w = ResultWriter::for_columns(typed(dim as i32), true);
            let ids: Vec<u64> = (0..rows as u64).collect();
            // Two appends, as a bisected batch makes them.
            let half = rows / 2;
            w.append(
                &UInt64Array::from(ids[..half].to_vec()),
                vectors(&ids[..half], dim),
            )
            .unwrap();
            w.append(
                &UInt64Array::from(ids[half..].to_vec()),
                vectors(&ids[half..], dim),
            )
            .unwrap();
            assert_eq!(w.len(), rows);
            let schema = Arc::new(Schema::new(vec![
                Field::new(ROW, DataType::UInt64, false),
                typed(dim as i32).field(0).clone(),
            ]));
            let bound = output_bound(&schema, rows, rows * dim * 4);
            let (r, cols) = w.finish().unwrap();
            let obj = encode_output(&schema, r, cols, store.try_reserve(bound).unwrap().unwrap())
                .unwrap();
            assert!(obj.len() <= bound, "{} > {bound}", obj.len());
            // Where vectors dominate, the bound is not loose either.
            if dim >= 64 {
                assert!(
                    bound <= obj.len() * 5 / 4 + 8192,
                    "{bound} vs {}",
                    obj.len()
                );
            }
        }
    }

    #[test]
    fn truncate_drops_a_failed_calls_results() {
        let mut w = ResultWriter::for_columns(typed(2), true);
        w.append(&UInt64Array::from(vec![0, 1, 2]), vectors(&[0, 1, 2], 2))
            .unwrap();
        w.append(&UInt64Array::from(vec![3, 4]), vectors(&[3, 4], 2))
            .unwrap();
        w.truncate(4);
        assert_eq!(w.len(), 4);
        w.truncate(2);
        let (rows, cols) = w.finish().unwrap();
        assert_eq!(rows.values().to_vec(), vec![0, 1]);
        assert_eq!(cols[0].len(), 2);
        let mut j = ResultWriter::new();
        j.push(0, "{}");
        j.push(1, "{}");
        j.truncate(1);
        assert_eq!(j.len(), 1);
    }

    #[test]
    fn a_typed_writer_refuses_json_and_a_json_writer_typed_columns() {
        let mut w = ResultWriter::for_columns(typed(2), true);
        w.push(0, "{}");
        assert!(w.finish().is_err());
        let mut j = ResultWriter::new();
        assert!(j
            .append(&UInt64Array::from(vec![0]), vectors(&[0], 2))
            .is_err());
        let mut w = ResultWriter::for_columns(typed(2), true);
        // Wrong width.
        assert!(w
            .append(&UInt64Array::from(vec![0]), vectors(&[0], 3))
            .is_err());
    }
}
