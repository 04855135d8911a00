//! A chunk of table rows as the object store's columns: strings sliced as
//! they are, other values as JSON text, every row checked.

use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::cast::AsArray;
use arrow_array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, StructArray, UInt64Array,
};
use arrow_json::writer::{make_encoder, EncoderOptions};
use arrow_schema::{DataType, Field, FieldRef};

use crate::error::PipelineError;
use crate::input::jsonl::RowLimits;
use crate::rows::{FieldKind, FieldSpec, RequestSchema, RowError};

use super::reader::{Chunk, Piece};
use super::{bad, Part, TableFile};

/// One piece's columns and each row's first problem.
pub(super) struct Converted {
    pub(super) fields: Vec<ArrayRef>,
    pub(super) raw: Option<ArrayRef>,
    pub(super) problems: Vec<Option<(String, String)>>,
}

pub(super) fn convert(
    file: &TableFile,
    schema: &RequestSchema,
    limits: &RowLimits,
    pieces: &[Piece],
    first_row: u64,
) -> Result<Chunk, PipelineError> {
    let count: usize = pieces.iter().map(|p| p.batch.num_rows()).sum();
    let mut errors = Vec::new();
    let (mut rows, mut lines) = (Vec::with_capacity(count), Vec::with_capacity(count));
    let mut fields: Vec<Vec<ArrayRef>> = vec![Vec::new(); schema.fields.len()];
    let mut raws = Vec::new();
    let mut row = first_row;
    for p in pieces {
        let part = &file.parts[p.part];
        let c = convert_piece(part, schema, &p.batch, limits, file.columns.as_deref())?;
        let mut keep = Vec::with_capacity(c.problems.len());
        for (i, problem) in c.problems.into_iter().enumerate() {
            let in_part = p.row_in_part + i as u64;
            match problem {
                None => {
                    rows.push(row);
                    lines.push(in_part + 1);
                    keep.push(true);
                }
                Some((column, message)) => {
                    errors.push(RowError {
                        path: part.shown.clone(),
                        line: in_part + 1,
                        row,
                        column: None,
                        message: format!("column {column:?}: {message}"),
                        excerpt: String::new(),
                        place: Some(part.place(in_part)),
                    });
                    keep.push(false);
                }
            }
            row += 1;
        }
        let all = keep.iter().all(|&k| k);
        let mask = BooleanArray::from(keep);
        let pick = |a: ArrayRef| -> Result<ArrayRef, PipelineError> {
            if all {
                Ok(a)
            } else {
                Ok(arrow_select::filter::filter(&a, &mask)?)
            }
        };
        for (acc, a) in fields.iter_mut().zip(c.fields) {
            acc.push(pick(a)?);
        }
        if let Some(r) = c.raw {
            raws.push(pick(r)?);
        }
    }
    let join = |parts: Vec<ArrayRef>| -> Result<ArrayRef, PipelineError> {
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().unwrap_or_else(|| unreachable!()));
        }
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        Ok(arrow_select::concat::concat(&refs)?)
    };
    let fields = fields
        .into_iter()
        .map(join)
        .collect::<Result<Vec<_>, _>>()?;
    let raw = if schema.keep_raw {
        Some(join(raws)?)
    } else {
        None
    };
    let str_bytes = |a: &ArrayRef| {
        let s = a.as_any().downcast_ref::<StringArray>();
        s.map_or(0, |s| {
            let o = s.value_offsets();
            (o[o.len() - 1] - o[0]) as usize
        })
    };
    let field_bytes: usize = fields.iter().map(str_bytes).sum();
    let raw_bytes = raw.as_ref().map_or(0, |a| match a.data_type() {
        DataType::Utf8 => str_bytes(a),
        _ => crate::batch::typed_room(a.as_ref()),
    });
    let quotes = schema
        .fields
        .iter()
        .zip(&fields)
        .filter(|(f, _)| f.kind == FieldKind::StringList)
        .map(|(_, a)| {
            let s = a.as_any().downcast_ref::<StringArray>();
            s.map_or(0, |s| memchr::memchr_iter(b'"', s.value_data()).count())
        })
        .sum();
    let span = (
        pieces[0].row_in_part + 1,
        pieces
            .last()
            .map_or(0, |p| p.row_in_part + p.batch.num_rows() as u64),
    );
    Ok(Chunk {
        count,
        rows: UInt64Array::from(rows),
        lines: UInt64Array::from(lines),
        fields,
        raw,
        errors,
        bytes: field_bytes.max(raw_bytes),
        quotes,
        span,
    })
}

pub(super) fn convert_piece(
    part: &Part,
    schema: &RequestSchema,
    batch: &RecordBatch,
    limits: &RowLimits,
    columns: Option<&[String]>,
) -> Result<Converted, PipelineError> {
    let n = batch.num_rows();
    let mut problems: Vec<Option<(String, String)>> = vec![None; n];
    let mut sizes = vec![0usize; n];
    let mut fields = Vec::with_capacity(schema.fields.len());
    for f in &schema.fields {
        let col = batch.column_by_name(&f.name);
        let out = field_column(part, f, col, &mut problems)?;
        let s = out
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| bad(&part.path, "internal: a field column is not utf8"))?;
        for (i, size) in sizes.iter_mut().enumerate() {
            if s.is_valid(i) {
                *size += s.value(i).len();
            }
        }
        fields.push(out);
    }
    let raw = if schema.keep_raw {
        // The row's columns as they are, typed (`input.columns` of them).
        let row = row_columns(batch, columns);
        for (size, r) in sizes.iter_mut().zip(row_sizes(&row)?) {
            *size = (*size).max(r);
        }
        Some(Arc::new(StructArray::from(row)) as ArrayRef)
    } else {
        None
    };
    for (i, size) in sizes.into_iter().enumerate() {
        if size > limits.max_line_bytes && problems[i].is_none() {
            problems[i] = Some((
                String::from("*"),
                format!(
                    "the row holds {size} bytes, more than input.max_line_bytes = {} bytes",
                    limits.max_line_bytes
                ),
            ));
        }
    }
    Ok(Converted {
        fields,
        raw,
        problems,
    })
}

/// The object store's string column for field `f`, noting each row's
/// first problem.
pub(super) fn field_column(
    part: &Part,
    f: &FieldSpec,
    col: Option<&ArrayRef>,
    problems: &mut [Option<(String, String)>],
) -> Result<ArrayRef, PipelineError> {
    let n = problems.len();
    let mut note = |i: usize, why: String| {
        if problems[i].is_none() {
            problems[i] = Some((f.name.clone(), why));
        }
    };
    let Some(col) = col else {
        if f.required {
            (0..n).for_each(|i| note(i, format!("missing, expected {}", f.kind.expected())));
        }
        return Ok(arrow_array::new_null_array(&DataType::Utf8, n));
    };
    for i in 0..n {
        if col.is_null(i) && f.required {
            note(
                i,
                format!("null, expected {} (required)", f.kind.expected()),
            );
        }
    }
    if let FieldKind::Refused(why) = f.kind {
        for i in (0..n).filter(|&i| col.is_valid(i)) {
            note(i, format!("refused: {why}"));
        }
        return Ok(arrow_array::new_null_array(&DataType::Utf8, n));
    }
    let out: ArrayRef = match f.kind {
        FieldKind::String | FieldKind::Literal(_) => {
            let s = if col.data_type() == &DataType::Utf8 {
                col.clone()
            } else {
                arrow_cast::cast(col, &DataType::Utf8)?
            };
            if let FieldKind::Literal(v) = f.kind {
                let strings = s.as_any().downcast_ref::<StringArray>();
                for i in 0..n {
                    let got = strings.filter(|a| a.is_valid(i)).map(|a| a.value(i));
                    if got.is_some_and(|g| g != v) {
                        note(i, format!("{:?}, expected {v:?}", got.unwrap_or_default()));
                    }
                }
            }
            s
        }
        FieldKind::Bool => {
            let b = col
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| bad(&part.path, format!("column {:?} is not boolean", f.name)))?;
            Arc::new(
                b.iter()
                    .map(|v| v.map(|v| if v { "true" } else { "false" }))
                    .collect::<StringArray>(),
            )
        }
        _ => {
            let field: FieldRef = Arc::new(Field::new(&f.name, col.data_type().clone(), true));
            Arc::new(json_text(&field, col.as_ref())?)
        }
    };
    Ok(out)
}

/// `batch` with only the columns named in `columns` (all without), in
/// the file's order.
pub(super) fn row_columns(batch: &RecordBatch, columns: Option<&[String]>) -> RecordBatch {
    let Some(names) = columns else {
        return batch.clone();
    };
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| names.contains(batch.schema_ref().field(i).name()))
        .collect();
    batch.project(&keep).unwrap_or_else(|_| batch.clone())
}

/// Each row's bytes in `batch`: a string's or a binary value's bytes, a
/// fixed-width value's width, any other value's JSON text (nulls: none).
pub(super) fn row_sizes(batch: &RecordBatch) -> Result<Vec<usize>, PipelineError> {
    let n = batch.num_rows();
    let mut sizes = vec![0usize; n];
    let mut add = |i: usize, k: usize| sizes[i] += k;
    for (f, col) in batch.schema_ref().fields().iter().zip(batch.columns()) {
        let valid = |i: usize| col.is_valid(i);
        match col.data_type() {
            DataType::Utf8 => {
                let o = col.as_string::<i32>().value_offsets();
                (0..n)
                    .filter(|&i| valid(i))
                    .for_each(|i| add(i, (o[i + 1] - o[i]) as usize));
            }
            DataType::LargeUtf8 => {
                let o = col.as_string::<i64>().value_offsets();
                (0..n)
                    .filter(|&i| valid(i))
                    .for_each(|i| add(i, (o[i + 1] - o[i]) as usize));
            }
            DataType::Binary => {
                let o = col.as_binary::<i32>().value_offsets();
                (0..n)
                    .filter(|&i| valid(i))
                    .for_each(|i| add(i, (o[i + 1] - o[i]) as usize));
            }
            DataType::Boolean => (0..n).filter(|&i| valid(i)).for_each(|i| add(i, 1)),
            dt if dt.primitive_width().is_some() => {
                let w = dt.primitive_width().unwrap_or(8);
                (0..n).filter(|&i| valid(i)).for_each(|i| add(i, w));
            }
            _ => {
                let text = json_text(f, col.as_ref())?;
                (0..n)
                    .filter(|&i| text.is_valid(i))
                    .for_each(|i| add(i, text.value(i).len()));
            }
        }
    }
    Ok(sizes)
}

/// Each value of `array` as JSON text (nulls stay null; an object's null
/// members are left out).
pub(super) fn json_text(field: &FieldRef, array: &dyn Array) -> Result<StringArray, PipelineError> {
    let options = EncoderOptions::default();
    let mut enc = make_encoder(field, array, &options)?;
    let mut out = StringBuilder::new();
    let mut buf = Vec::new();
    for i in 0..array.len() {
        if array.is_null(i) {
            out.append_null();
            continue;
        }
        buf.clear();
        enc.encode(i, &mut buf);
        // The encoder writes valid UTF-8 JSON.
        out.append_value(String::from_utf8_lossy(&buf));
    }
    Ok(out.finish())
}
