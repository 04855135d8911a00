//! JSON Lines from Arrow columns: the one place result text is made.
//!
//! ```text
//!  output batch (_row, passthrough…, backend columns) ──▶ one JSON object per row
//!     UInt64/Int*/Bool      → numbers, true/false
//!     Float32 / Float64     → shortest text that reads back as the same value
//!     Utf8                  → a JSON string (escaped as serde_json does)
//!     Utf8, JSON text       → written as it is (an id of any type, a passthrough value)
//!     Utf8, JSON object     → its members, spliced in (a backend without a schema)
//!     (FixedSize)List of f32 → [ … ]
//!     any other type        → as arrow-json writes it (f64, dates, structs,
//!                             lists of strings: a table's row as pyarrow
//!                             and arrow-json write it)
//!     null                  → the key is left out (a list item: null), or
//!                             `null` where the field says [`NULLS`]
//! ```
//!
//! A column's field metadata says how its values are written:
//! [`JSON_TEXT`] (the value is JSON text), [`JSON_OBJECT`] (the value is a
//! whole object whose members join the row's), [`PYTHON`] (Python's
//! `json.dumps` defaults: `", "` and `": "`, `\uXXXX` for non-ASCII, floats
//! as `repr` of their f64 value; sheaf-serve's lines), [`JSONL_ONLY`] (left
//! out of Parquet and Arrow parts), [`NULLS`] (a null is written as `null`,
//! the key kept: formats whose keys are always there).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_json::writer::{make_encoder, EncoderOptions, NullableEncoder};
use arrow_schema::{ArrowError, DataType, Field, Schema};

/// Field metadata key: how the column's values are written (one of
/// [`JSON_TEXT`], [`JSON_OBJECT`]).
pub const ENCODING: &str = "stook.encoding";
/// The column's Utf8 values are JSON text, written as they are.
pub const JSON_TEXT: &str = "json";
/// The column's Utf8 values are JSON objects whose members are written
/// into the row's object (the last column only).
pub const JSON_OBJECT: &str = "json-object";
/// Field metadata key: the style of the column's member (`python`).
pub const STYLE: &str = "stook.style";
/// Python's `json.dumps` defaults.
pub const PYTHON: &str = "python";
/// Field metadata key: `"true"` leaves the column out of table parts.
pub const JSONL_ONLY: &str = "stook.jsonl_only";
/// Field metadata key: `"write"` writes a null as `key: null` instead of
/// leaving the key out.
pub const NULLS: &str = "stook.nulls";
/// The value of [`NULLS`] that writes them.
pub const WRITE: &str = "write";

/// `field` with `key = value` in its metadata.
pub fn with_meta(field: Field, key: &str, value: &str) -> Field {
    let mut m = field.metadata().clone();
    m.insert(key.to_string(), value.to_string());
    field.with_metadata(m)
}

fn meta<'a>(field: &'a Field, key: &str) -> Option<&'a str> {
    field.metadata().get(key).map(String::as_str)
}

/// Whether `field` holds JSON text (or JSON objects).
pub fn is_json_text(field: &Field) -> bool {
    matches!(meta(field, ENCODING), Some(JSON_TEXT | JSON_OBJECT))
}

/// Whether `field` is left out of table parts.
pub fn is_jsonl_only(field: &Field) -> bool {
    meta(field, JSONL_ONLY) == Some("true")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Compact,
    Python,
}

impl Style {
    fn of(field: &Field) -> Self {
        if meta(field, STYLE) == Some(PYTHON) {
            Style::Python
        } else {
            Style::Compact
        }
    }

    fn item_sep(self) -> &'static str {
        match self {
            Style::Compact => ",",
            Style::Python => ", ",
        }
    }
}

enum Kind {
    /// Written here.
    Value,
    /// Written by arrow-json's encoder (as arrow-json writes a table's row).
    Arrow,
    Text,
    Object,
}

/// Whether values of `dt` are written here in compact style; any other type
/// (f64, dates, structs, lists of strings, …) goes through arrow-json's
/// encoder, so a table's row reads as arrow-json writes it.
fn written_here(dt: &DataType) -> bool {
    match dt {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => {
            f.data_type() == &DataType::Float32
        }
        DataType::Boolean | DataType::Float32 | DataType::Utf8 => true,
        dt => dt.is_integer(),
    }
}

/// Writes the rows of record batches as JSON Lines.
pub struct LineEncoder {
    /// (index, `"key":` in the column's style, style, kind, whether a null
    /// is written) of each column written.
    columns: Vec<(usize, String, Style, Kind, bool)>,
    /// How arrow-json writes the columns given to it: nulls left out.
    options: EncoderOptions,
}

impl LineEncoder {
    /// An encoder for batches of `schema`; `with_row`: write the `_row`
    /// column (a result's input row) when there is one.
    pub fn new(schema: &Schema, with_row: bool) -> Self {
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| with_row || f.name() != "_row")
            .map(|(i, f)| {
                let style = Style::of(f);
                let mut key = String::new();
                push_string(&mut key, f.name(), style);
                key.push_str(if style == Style::Python { ": " } else { ":" });
                let kind = match meta(f, ENCODING) {
                    Some(JSON_TEXT) => Kind::Text,
                    Some(JSON_OBJECT) => Kind::Object,
                    _ if style == Style::Compact && !written_here(f.data_type()) => Kind::Arrow,
                    _ => Kind::Value,
                };
                (i, key, style, kind, meta(f, NULLS) == Some(WRITE))
            })
            .collect();
        LineEncoder {
            columns,
            options: EncoderOptions::default(),
        }
    }

    /// arrow-json's encoders of the columns it writes, for `batch`.
    fn arrow_encoders<'a>(&'a self, batch: &'a RecordBatch) -> Vec<Option<NullableEncoder<'a>>> {
        let options = &self.options;
        self.columns
            .iter()
            .map(|(c, _, _, kind, _)| match kind {
                Kind::Arrow => {
                    let field = &batch.schema_ref().fields()[*c];
                    make_encoder(field, batch.column(*c).as_ref(), options).ok()
                }
                _ => None,
            })
            .collect()
    }

    /// Appends row `i` of `batch` (of the encoder's schema) and a newline.
    pub fn write_row(&self, batch: &RecordBatch, i: usize, out: &mut String) {
        let mut encoders = self.arrow_encoders(batch);
        self.row(batch, i, &mut encoders, &mut Vec::new(), out);
    }

    /// Every row of `batch`, each line ended by a newline.
    pub fn write_batch(&self, batch: &RecordBatch, out: &mut String) {
        let mut encoders = self.arrow_encoders(batch);
        let mut buf = Vec::new();
        for i in 0..batch.num_rows() {
            self.row(batch, i, &mut encoders, &mut buf, out);
        }
    }

    /// Every row of `batch` as its own line, without the newline.
    pub fn lines(&self, batch: &RecordBatch) -> Vec<String> {
        let mut encoders = self.arrow_encoders(batch);
        let mut buf = Vec::new();
        (0..batch.num_rows())
            .map(|i| {
                let mut line = String::new();
                self.row(batch, i, &mut encoders, &mut buf, &mut line);
                line.pop();
                line
            })
            .collect()
    }

    fn row(
        &self,
        batch: &RecordBatch,
        i: usize,
        encoders: &mut [Option<NullableEncoder<'_>>],
        buf: &mut Vec<u8>,
        out: &mut String,
    ) {
        let start = out.len();
        let mut last: Option<Style> = None;
        let mut object_tail = None;
        out.push('{');
        for ((c, key, style, kind, nulls), enc) in self.columns.iter().zip(encoders.iter_mut()) {
            let col = batch.column(*c);
            let null = col.is_null(i);
            if null && (!nulls || matches!(kind, Kind::Object)) {
                continue;
            }
            if let Kind::Object = kind {
                object_tail = Some(col.as_string::<i32>().value(i));
                break;
            }
            if let Some(prev) = last {
                out.push_str(if prev == Style::Python && *style == Style::Python {
                    ", "
                } else {
                    ","
                });
            }
            last = Some(*style);
            out.push_str(key);
            if null {
                out.push_str("null");
                continue;
            }
            match (kind, enc) {
                (Kind::Text, _) => out.push_str(col.as_string::<i32>().value(i)),
                (Kind::Arrow, Some(enc)) => {
                    buf.clear();
                    enc.encode(i, buf);
                    // arrow-json writes UTF-8.
                    out.push_str(std::str::from_utf8(buf).unwrap_or("null"));
                }
                _ => push_value(out, col.as_ref(), i, *style),
            }
        }
        match object_tail {
            // Alone, a result object is written as the backend wrote it.
            Some(json) if last.is_none() => {
                out.truncate(start);
                out.push_str(json);
            }
            Some(json) => {
                let rest = json
                    .trim_start()
                    .strip_prefix('{')
                    .unwrap_or(json)
                    .trim_start();
                if !rest.starts_with('}') {
                    out.push(',');
                }
                out.push_str(rest);
            }
            None => out.push('}'),
        }
        out.push('\n');
    }
}

fn push_value(out: &mut String, col: &dyn Array, i: usize, style: Style) {
    if col.is_null(i) {
        out.push_str("null");
        return;
    }
    macro_rules! int {
        ($t:ty) => {{
            let _ = write!(out, "{}", col.as_primitive::<$t>().value(i));
        }};
    }
    match col.data_type() {
        DataType::Boolean => out.push_str(if col.as_boolean().value(i) {
            "true"
        } else {
            "false"
        }),
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => int!(UInt64Type),
        DataType::Float32 => {
            let x = col.as_primitive::<Float32Type>().value(i);
            match style {
                Style::Compact => push_f32(out, x),
                Style::Python => push_python_float(out, x as f64),
            }
        }
        DataType::Float64 => {
            let x = col.as_primitive::<Float64Type>().value(i);
            match style {
                Style::Compact => push_f64(out, x),
                Style::Python => push_python_float(out, x),
            }
        }
        DataType::Utf8 => push_string(out, col.as_string::<i32>().value(i), style),
        DataType::LargeUtf8 => push_string(out, col.as_string::<i64>().value(i), style),
        DataType::FixedSizeList(_, _) => {
            let list = col.as_fixed_size_list();
            push_items(out, list.value(i).as_ref(), style);
        }
        DataType::List(_) => push_items(out, col.as_list::<i32>().value(i).as_ref(), style),
        DataType::LargeList(_) => push_items(out, col.as_list::<i64>().value(i).as_ref(), style),
        // Anything else through arrow's own formatting, as a string.
        _ => {
            let text = arrow_cast::display::array_value_to_string(col, i).unwrap_or_default();
            push_string(out, &text, style);
        }
    }
}

fn push_items(out: &mut String, items: &dyn Array, style: Style) {
    out.push('[');
    // The common case, a vector of f32, without a type test per value.
    if let (DataType::Float32, Style::Compact, 0) = (items.data_type(), style, items.null_count()) {
        for (k, &x) in items
            .as_primitive::<Float32Type>()
            .values()
            .iter()
            .enumerate()
        {
            if k > 0 {
                out.push(',');
            }
            push_f32(out, x);
        }
    } else {
        for k in 0..items.len() {
            if k > 0 {
                out.push_str(style.item_sep());
            }
            push_value(out, items, k, style);
        }
    }
    out.push(']');
}

fn push_string(out: &mut String, s: &str, style: Style) {
    match style {
        Style::Compact => push_json_string(out, s),
        Style::Python => push_python_string(out, s),
    }
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it.
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out.push('"');
}

/// Appends `x` as the shortest text that reads back as the same f32:
/// positional between 1e-5 and 1e16, else with an exponent, so at most 17
/// bytes (`-0.0000123456789`, `-1.1754944e-38`). Not finite: `null`.
pub fn push_f32(out: &mut String, x: f32) {
    let far = x != 0.0 && !(1e-5..1e16).contains(&x.abs());
    push_shortest(out, x, x.is_finite(), far);
}

fn push_f64(out: &mut String, x: f64) {
    let far = x != 0.0 && !(1e-5..1e16).contains(&x.abs());
    push_shortest(out, x, x.is_finite(), far);
}

/// `x`'s shortest round-trip text in its own type, with an exponent when
/// `far` from 1; `null` when not finite.
fn push_shortest<T: std::fmt::Display + std::fmt::LowerExp>(
    out: &mut String,
    x: T,
    finite: bool,
    far: bool,
) {
    if !finite {
        out.push_str("null");
    } else if far {
        let _ = write!(out, "{x:e}");
    } else {
        let _ = write!(out, "{x}");
    }
}

/// Appends `s` as Python's `json.dumps` (ensure_ascii) writes a string.
pub fn push_python_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Appends `x` as Python's `repr(float)`: the shortest digits that read
/// back as the same f64, positional for exponents −4 to 15, else
/// `d.ddde±XX`.
pub fn push_python_float(out: &mut String, x: f64) {
    if !x.is_finite() {
        out.push_str(if x.is_nan() {
            "NaN"
        } else if x > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        });
        return;
    }
    // Rust's `{:e}` gives the same shortest digits: "-1.2345e-7".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let mut digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // On an exact tie between two shortest candidates Rust rounds up and
    // Python to the even digit: look at the exact expansion (finite for a
    // binary float; a tie has at most 18 significant digits).
    let exact = format!("{:.60e}", x.abs());
    if let Some((m, e)) = exact.split_once('e') {
        let all: String = m.chars().filter(|c| *c != '.').collect();
        let n = digits.len();
        let tail = &all[n.min(all.len())..];
        let tie =
            e.parse() == Ok(exp) && tail.starts_with('5') && tail[1..].bytes().all(|b| b == b'0');
        if tie && (all.as_bytes()[n - 1] - b'0').is_multiple_of(2) {
            digits = all[..n].trim_end_matches('0').to_string();
            if digits.is_empty() {
                digits.push('0');
            }
        }
    }
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        } else {
            let int = exp as usize + 1;
            if digits.len() <= int {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int]);
                out.push('.');
                out.push_str(&digits[int..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// A column of JSON text as a column of `to`: a string's decoded text,
/// any other value's JSON text, for Utf8; parsed as `to` otherwise. A
/// value that does not fit is an error naming its position.
pub fn json_text_to(col: &StringArray, to: &DataType) -> Result<ArrayRef, ArrowError> {
    if to == &DataType::Utf8 {
        let mut b =
            arrow_array::builder::StringBuilder::with_capacity(col.len(), col.value_data().len());
        for v in col.iter() {
            match v.map(|v| (v, v.trim())) {
                None | Some((_, "null")) => b.append_null(),
                Some((_, t)) if t.starts_with('"') => {
                    let s: String = serde_json::from_str(t).map_err(|e| {
                        ArrowError::JsonError(format!("{t:?} is not a JSON string: {e}"))
                    })?;
                    b.append_value(s);
                }
                Some((v, _)) => b.append_value(v),
            }
        }
        return Ok(Arc::new(b.finish()));
    }
    let schema = Arc::new(Schema::new(vec![Field::new("v", to.clone(), true)]));
    let mut decoder = arrow_json::ReaderBuilder::new(schema)
        .with_batch_size(col.len().max(1))
        .with_coerce_primitive(true)
        .build_decoder()?;
    let mut line = String::new();
    for v in col.iter() {
        line.clear();
        line.push_str("{\"v\":");
        line.push_str(v.unwrap_or("null"));
        line.push_str("}\n");
        let mut text = line.as_bytes();
        while !text.is_empty() {
            let n = decoder.decode(text)?;
            text = &text[n..];
        }
    }
    match decoder.flush()? {
        Some(b) if b.num_rows() == col.len() => Ok(b.column(0).clone()),
        Some(b) => Err(ArrowError::JsonError(format!(
            "{} values decoded from {}",
            b.num_rows(),
            col.len()
        ))),
        None => Ok(arrow_array::new_empty_array(to)),
    }
}

/// `batch` as a table part's record batch of `table`: columns taken by
/// name, JSON text turned into the table's type, JSONL-only ones left out.
pub fn to_table(batch: &RecordBatch, table: &Arc<Schema>) -> Result<RecordBatch, ArrowError> {
    let by_name: HashMap<&str, usize> = batch
        .schema_ref()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name().as_str(), i))
        .collect();
    let schema = batch.schema();
    let cols = table
        .fields()
        .iter()
        .map(|f| {
            let i = *by_name.get(f.name().as_str()).ok_or_else(|| {
                ArrowError::SchemaError(format!("the results have no column {:?}", f.name()))
            })?;
            let col = batch.column(i);
            let object = meta(schema.field(i), ENCODING) == Some(JSON_OBJECT);
            if object && f.data_type() == &DataType::Utf8 {
                // Whole objects are their own text: the column as it is.
                Ok(col.clone())
            } else if is_json_text(schema.field(i)) {
                json_text_to(col.as_string::<i32>(), f.data_type())
                    .map_err(|e| ArrowError::JsonError(format!("column {:?}: {e}", f.name())))
            } else if col.data_type() != f.data_type() {
                arrow_cast::cast(col, f.data_type())
            } else {
                Ok(col.clone())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(table.clone(), cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
    use arrow_array::{Int64Array, UInt64Array};

    fn float(x: f64) -> String {
        let mut s = String::new();
        push_python_float(&mut s, x);
        s
    }

    #[test]
    fn floats_print_as_python_repr() {
        // Each pair: Python's repr(x).
        for (x, want) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (-2.5e-7, "-2.5e-07"),
            (123.456, "123.456"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.25e100, "1.25e+100"),
            (0.1f32 as f64, "0.10000000149011612"),
            (-0.034_465_663_f32 as f64, "-0.03446566313505173"),
            // A tie: Python keeps the even digit, Rust's shortest rounds up.
            (
                f64::from_bits(0xbfb4_4040_0000_0000),
                "-0.07910537719726562",
            ),
            (0.5f32 as f64 + 2f64.powi(-24), "0.5000000596046448"),
        ] {
            assert_eq!(float(x), want, "{x:e}");
        }
    }

    #[test]
    fn strings_print_as_json_dumps_ensure_ascii() {
        let mut s = String::new();
        push_python_string(&mut s, "a\"\\\n\t\u{1}é€😀\u{7f}~");
        assert_eq!(s, r#""a\"\\\n\t\u0001\u00e9\u20ac\ud83d\ude00\u007f~""#);
    }

    #[test]
    fn strings_escape_as_serde_json() {
        for s in ["", "plain", "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}é😀\u{7f}"] {
            let mut out = String::new();
            push_json_string(&mut out, s);
            assert_eq!(out, serde_json::Value::from(s).to_string());
        }
    }

    #[test]
    fn f32_text_is_shortest_and_reads_back() {
        for x in [
            0.0f32,
            -0.0,
            1.0,
            0.1,
            1e-5,
            9.99e-6,
            -1.1754944e-38,
            3.4e38,
            1e16,
        ] {
            let mut s = String::new();
            push_f32(&mut s, x);
            assert!(s.len() <= 17, "{s}");
            assert_eq!(s.parse::<f32>().unwrap(), x, "{s}");
        }
    }

    fn vectors(rows: &[Option<[f32; 2]>]) -> ArrayRef {
        let mut b = FixedSizeListBuilder::new(Float32Builder::new(), 2);
        for r in rows {
            match r {
                Some(v) => {
                    b.values().append_slice(v);
                    b.append(true);
                }
                None => {
                    b.values().append_slice(&[0.0, 0.0]);
                    b.append(false);
                }
            }
        }
        Arc::new(b.finish())
    }

    #[test]
    fn rows_lead_passthrough_leads_results_and_nulls_leave_keys_out() {
        let schema = Schema::new(vec![
            Field::new("_row", DataType::UInt64, false),
            Field::new("name", DataType::Utf8, true),
            with_meta(Field::new("id", DataType::Utf8, true), ENCODING, JSON_TEXT),
            Field::new("n", DataType::Int64, true),
            Field::new("v", vectors(&[]).data_type().clone(), true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema.clone()),
            vec![
                Arc::new(UInt64Array::from(vec![7, 8])),
                Arc::new(StringArray::from(vec![Some("é\"x"), None])),
                Arc::new(StringArray::from(vec![Some("{\"a\": 1}"), Some("3")])),
                Arc::new(Int64Array::from(vec![None, Some(-2)])),
                vectors(&[Some([0.5, -1e-7]), None]),
            ],
        )
        .unwrap();
        let mut out = String::new();
        LineEncoder::new(&schema, true).write_batch(&batch, &mut out);
        assert_eq!(
            out,
            "{\"_row\":7,\"name\":\"é\\\"x\",\"id\":{\"a\": 1},\"v\":[0.5,-1e-7]}\n\
             {\"_row\":8,\"id\":3,\"n\":-2}\n"
        );
        out.clear();
        LineEncoder::new(&schema, false).write_row(&batch, 1, &mut out);
        assert_eq!(out, "{\"id\":3,\"n\":-2}\n");
    }

    #[test]
    fn fields_that_write_nulls_keep_their_keys() {
        let text = with_meta(Field::new("r", DataType::Utf8, true), ENCODING, JSON_TEXT);
        let schema = Schema::new(vec![
            with_meta(Field::new("c", DataType::Utf8, true), NULLS, WRITE),
            with_meta(text, NULLS, WRITE),
            Field::new("e", DataType::Utf8, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema.clone()),
            vec![
                Arc::new(StringArray::from(vec![None, Some("x")])),
                Arc::new(StringArray::from(vec![None, Some("{}")])),
                Arc::new(StringArray::from(vec![None::<&str>, None])),
            ],
        )
        .unwrap();
        let mut out = String::new();
        LineEncoder::new(&schema, false).write_batch(&batch, &mut out);
        assert_eq!(out, "{\"c\":null,\"r\":null}\n{\"c\":\"x\",\"r\":{}}\n");
    }

    #[test]
    fn result_objects_are_spliced_after_the_leading_columns() {
        let object = with_meta(
            Field::new("result", DataType::Utf8, false),
            ENCODING,
            JSON_OBJECT,
        );
        let schema = Schema::new(vec![
            Field::new("_row", DataType::UInt64, false),
            Field::new("p", DataType::Utf8, true),
            object,
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema.clone()),
            vec![
                Arc::new(UInt64Array::from(vec![0, 1, 2])),
                Arc::new(StringArray::from(vec![Some("x"), None, None])),
                Arc::new(StringArray::from(vec![" { \"a\":1} ", "{}", "{ }"])),
            ],
        )
        .unwrap();
        let mut out = String::new();
        LineEncoder::new(&schema, true).write_batch(&batch, &mut out);
        assert_eq!(
            out,
            "{\"_row\":0,\"p\":\"x\",\"a\":1} \n{\"_row\":1}\n{\"_row\":2}\n"
        );
        out.clear();
        LineEncoder::new(&schema, false).write_batch(&batch, &mut out);
        // Alone, an object is written byte for byte.
        assert_eq!(out, "{\"p\":\"x\",\"a\":1} \n{}\n{ }\n");
    }

    #[test]
    fn python_style_columns_use_json_dumps_separators() {
        let py = |f: Field| with_meta(f, STYLE, PYTHON);
        let schema = Schema::new(vec![
            Field::new("_row", DataType::UInt64, false),
            Field::new("p", DataType::Utf8, true),
            py(Field::new("id", DataType::Utf8, false)),
            py(with_meta(
                Field::new("m", DataType::Utf8, false),
                ENCODING,
                JSON_TEXT,
            )),
            py(Field::new("v", vectors(&[]).data_type().clone(), false)),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema.clone()),
            vec![
                Arc::new(UInt64Array::from(vec![3])),
                Arc::new(StringArray::from(vec![Some("q")])),
                Arc::new(StringArray::from(vec!["é"])),
                Arc::new(StringArray::from(vec!["{}"])),
                vectors(&[Some([0.5, 0.1])]),
            ],
        )
        .unwrap();
        let mut out = String::new();
        LineEncoder::new(&schema, true).write_batch(&batch, &mut out);
        assert_eq!(
            out,
            "{\"_row\":3,\"p\":\"q\",\"id\": \"\\u00e9\", \"m\": {}, \"v\": [0.5, 0.10000000149011612]}\n"
        );
    }

    #[test]
    fn json_text_becomes_the_tables_type() {
        let col = StringArray::from(vec![Some("\"a\\u00e9\""), Some("7"), None, Some("null")]);
        let s = json_text_to(&col, &DataType::Utf8).unwrap();
        let s = s.as_string::<i32>();
        assert_eq!(s.value(0), "aé");
        assert_eq!(s.value(1), "7");
        assert!(s.is_null(2) && s.is_null(3));
        let ints = StringArray::from(vec![Some("7"), None, Some("-1")]);
        let i = json_text_to(&ints, &DataType::Int64).unwrap();
        assert_eq!(
            i.as_primitive::<Int64Type>().iter().collect::<Vec<_>>(),
            vec![Some(7), None, Some(-1)]
        );
        let bad = StringArray::from(vec![Some("{\"x\":1}")]);
        assert!(json_text_to(&bad, &DataType::Int64).is_err());
    }
}
