//! Input rows: splitting a mapped JSON Lines file into lines, and parsing each
//! line strictly against the backend's request schema.
//!
//! The policy, which the README repeats:
//! - each line is exactly one JSON value (RFC 8259), which must be an object;
//!   whitespace around it is allowed, anything else after it is an error;
//! - the bytes must be UTF-8 (checked before parsing, so the error names the
//!   byte); a `\r` before the `\n` is dropped; a missing final newline is fine;
//! - blank (empty or whitespace-only) lines are skipped and counted;
//! - a UTF-8 byte order mark is accepted at the very start of the file only;
//! - a key that the backend reads may appear once: a duplicate is an error,
//!   since either choice would silently drop data; other keys are not read
//!   and are passed through untouched;
//! - in a string field the backend reads, a `\u` escape of a lone UTF-16
//!   surrogate is an error (it has no UTF-8 form); in keys and values that
//!   are passed through as JSON text, escapes are kept verbatim, never decoded;
//! - deep nesting never overflows the stack: values the backend does not
//!   decode are skipped without recursion, at any depth.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// What a backend requires of each row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestSchema {
    /// Fields the backend reads, in column order.
    pub fields: Vec<FieldSpec>,
    /// Whether the backend needs the whole row's JSON text as well.
    pub keep_raw: bool,
    /// Every line is a request the backend answers, a bad one too: a line
    /// that cannot be read (not JSON, not UTF-8, too long, a field of the
    /// wrong type) reaches the backend as a row with no values and its
    /// problem ([`ParsedRow::problem`]), instead of being refused or
    /// skipped. JSON Lines input only.
    pub answer_bad_rows: bool,
    /// A field whose value must differ on every row (`custom_id`): the
    /// whole input is checked before the run, whatever `on_error` says,
    /// and a repeated value is refused naming both lines. JSON Lines input
    /// only; not checked for rows fed from memory.
    pub unique: Option<usize>,
}

/// One field a backend reads from each row.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldSpec {
    /// The key in the row's object.
    pub name: String,
    /// What its value must be.
    pub kind: FieldKind,
    /// Whether a row without it is an error.
    pub required: bool,
}

/// The type a field's value must have. `null` counts as absent for all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// A JSON string, stored decoded.
    String,
    /// Any JSON value, stored as its JSON text.
    Json,
    /// `true` or `false`, stored as that text.
    Bool,
    /// A list of strings, checked (UTF-8, no lone surrogates) and stored
    /// as its JSON text.
    StringList,
    /// This exact string.
    Literal(&'static str),
    /// Refused when present (not null); the text says why.
    Refused(&'static str),
}

impl FieldSpec {
    /// A field named `name` of `kind`, `required` or not.
    pub fn new(name: &str, kind: FieldKind, required: bool) -> Self {
        FieldSpec {
            name: name.into(),
            kind,
            required,
        }
    }
}

impl FieldKind {
    /// What a value must be, in words.
    pub fn expected(self) -> String {
        match self {
            FieldKind::String => "a string".into(),
            FieldKind::Json => "a value".into(),
            FieldKind::Bool => "true or false".into(),
            FieldKind::StringList => "a list of strings".into(),
            FieldKind::Literal(v) => format!("{v:?}"),
            FieldKind::Refused(_) => "nothing".into(),
        }
    }
}

impl RequestSchema {
    /// The schema of a text model: a required string `text_field` and an
    /// optional `id_field` of any type, copied into the result.
    pub fn text_with_id(text_field: &str, id_field: &str) -> Self {
        RequestSchema {
            fields: vec![
                FieldSpec {
                    name: text_field.to_string(),
                    kind: FieldKind::String,
                    required: true,
                },
                FieldSpec {
                    name: id_field.to_string(),
                    kind: FieldKind::Json,
                    required: false,
                },
            ],
            ..RequestSchema::default()
        }
    }

    /// Whether the checks before the run need every row of a file read
    /// through in a way only JSON Lines allows (answered bad rows, unique
    /// values).
    pub fn needs_lines(&self) -> bool {
        self.answer_bad_rows || self.unique.is_some()
    }

    /// This schema with the fields `names` as well (optional, any value;
    /// those it reads already stay as they are), and each name's field
    /// index: what `[output] passthrough` copies into every result.
    pub fn with_passthrough(&self, names: &[String]) -> (RequestSchema, Vec<usize>) {
        let mut s = self.clone();
        let idx = names
            .iter()
            .map(|n| {
                s.fields
                    .iter()
                    .position(|f| &f.name == n)
                    .unwrap_or_else(|| {
                        s.fields.push(FieldSpec {
                            name: n.clone(),
                            kind: FieldKind::Json,
                            required: false,
                        });
                        s.fields.len() - 1
                    })
            })
            .collect();
        (s, idx)
    }

    /// Whether results may grow with the strings in a row: a field is a
    /// list of strings, or the backend answers whole requests (whose JSON
    /// values may hold lists). The Source counts `"`s then.
    pub fn has_lists(&self) -> bool {
        self.answer_bad_rows || self.fields.iter().any(|f| f.kind == FieldKind::StringList)
    }

    /// One line per field, for `stook backends`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .fields
            .iter()
            .map(|f| {
                if let FieldKind::Refused(why) = f.kind {
                    return format!("\"{}\": refused ({why})", f.name);
                }
                let kind = match f.kind {
                    FieldKind::Json => "any JSON value".into(),
                    k => k.expected(),
                };
                let need = if f.required { "required" } else { "optional" };
                format!("\"{}\": {kind} ({need})", f.name)
            })
            .collect();
        if self.keep_raw {
            parts.push("any other keys (the whole object is kept)".into());
        } else {
            parts.push("other keys are ignored".into());
        }
        format!("a JSON object; {}", parts.join("; "))
    }
}

/// A row that passed validation: the values of the schema's fields (in its
/// order) and the trimmed line.
#[derive(Debug)]
pub struct ParsedRow<'a> {
    /// One value per schema field; `None` where an optional field is absent
    /// or null.
    pub values: Vec<Option<Cow<'a, str>>>,
    /// The row's JSON text without surrounding whitespace.
    pub raw: &'a str,
    /// Why the line could not be read, where the schema answers bad rows
    /// (`values` are all `None` then, and `raw` empty).
    pub problem: Option<String>,
}

/// The longest problem text an answered bad row carries, in bytes.
pub const PROBLEM_BYTES: usize = 512;

impl ParsedRow<'_> {
    /// A bad line answered instead of refused: no values, and its problem
    /// (where it is, and what), at most [`PROBLEM_BYTES`] long.
    pub fn answered(schema: &RequestSchema, line: u64, p: RowProblem) -> Self {
        let mut text = match p.column {
            Some(c) => format!("line {line}, column {c}: {}", p.message),
            None => format!("line {line}: {}", p.message),
        };
        if text.len() > PROBLEM_BYTES {
            let mut end = PROBLEM_BYTES - 3;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        ParsedRow {
            values: vec![None; schema.fields.len()],
            raw: "",
            problem: Some(text),
        }
    }
}

/// Why one line was refused, without its location.
#[derive(Clone, Debug, PartialEq)]
pub struct RowProblem {
    /// 1-based column (byte) within the line, where known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// A bad input row, with where it is.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RowError {
    /// The input file.
    pub path: Arc<str>,
    /// 1-based line in the file.
    pub line: u64,
    /// 0-based row number (blank lines are not rows).
    pub row: u64,
    /// 1-based byte column within the line, where known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// A short excerpt of the line.
    pub excerpt: String,
    /// Where the row is, for input that has no lines (a Parquet or Arrow
    /// file): its row and row group, and the column at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub place: Option<String>,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(place) = &self.place {
            return write!(f, "{}: {place}: {}", self.path, self.message);
        }
        write!(f, "{}:{}:", self.path, self.line)?;
        if let Some(c) = self.column {
            write!(f, "{c}:")?;
        }
        write!(f, " {}", self.message)?;
        if !self.excerpt.is_empty() {
            write!(f, " (near {})", self.excerpt)?;
        }
        Ok(())
    }
}

impl std::error::Error for RowError {}

const EXCERPT_CHARS: usize = 40;

/// A short, printable excerpt of `line` around byte `column` (1-based).
pub fn excerpt(line: &[u8], column: Option<usize>) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(4 * EXCERPT_CHARS * 4)]);
    let at = column.unwrap_or(1).saturating_sub(1).min(text.len());
    let start = at.saturating_sub(EXCERPT_CHARS / 2);
    let mut s: String = text
        .char_indices()
        .skip_while(|(i, _)| *i < start)
        .map(|(_, c)| c)
        .take(EXCERPT_CHARS)
        .collect();
    if line.len() > start + s.len() {
        s.push('…');
    }
    if start > 0 {
        s.insert(0, '…');
    }
    format!("{s:?}")
}

/// One line of the input: its 1-based number, its bytes (without `\n` or a
/// final `\r`) and where it starts in the file.
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    /// 1-based line number.
    pub number: u64,
    /// Byte offset of the line in the file.
    pub offset: usize,
    /// The line's bytes.
    pub bytes: &'a [u8],
}

impl Line<'_> {
    /// Empty or only JSON whitespace.
    pub fn is_blank(&self) -> bool {
        is_blank(self.bytes)
    }
}

/// Whether a line's bytes are empty or only JSON whitespace.
pub fn is_blank(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Splits `data[start..]` into lines, numbering from `first_line`.
pub struct Lines<'a> {
    data: &'a [u8],
    pos: usize,
    next_number: u64,
}

impl<'a> Lines<'a> {
    /// Lines of `data` from byte `pos`, the first being number `first_line`.
    pub fn new(data: &'a [u8], pos: usize, first_line: u64) -> Self {
        Lines {
            data,
            pos,
            next_number: first_line,
        }
    }

    /// The byte offset of the next line.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The number the next line will have.
    pub fn next_number(&self) -> u64 {
        self.next_number
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        if self.pos >= self.data.len() {
            return None;
        }
        let rest = &self.data[self.pos..];
        let (mut bytes, advance) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], i + 1),
            None => (rest, rest.len()),
        };
        if let [head @ .., b'\r'] = bytes {
            bytes = head;
        }
        let line = Line {
            number: self.next_number,
            offset: self.pos,
            bytes,
        };
        self.pos += advance;
        self.next_number += 1;
        Some(line)
    }
}

/// Where the rows start: after a UTF-8 byte order mark, if the file has one.
pub fn data_start(data: &[u8]) -> usize {
    if data.starts_with(&[0xEF, 0xBB, 0xBF]) {
        3
    } else {
        0
    }
}

/// Parses one line strictly against `schema`.
pub fn parse_row<'a>(line: &'a [u8], schema: &RequestSchema) -> Result<ParsedRow<'a>, RowProblem> {
    let text = std::str::from_utf8(line).map_err(|e| RowProblem {
        column: Some(e.valid_up_to() + 1),
        message: format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1),
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let values = RowSeed { schema }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|_| v))
        .map_err(|e| json_problem(&e))?;
    let mut out = Vec::with_capacity(values.len());
    for (spec, v) in schema.fields.iter().zip(values) {
        if v.is_none() && spec.required {
            return Err(RowProblem {
                column: None,
                message: format!(
                    "missing field \"{}\" (expected {})",
                    spec.name,
                    spec.kind.expected()
                ),
            });
        }
        out.push(v);
    }
    Ok(ParsedRow {
        values: out,
        raw: text.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n')),
        problem: None,
    })
}

fn json_problem(e: &serde_json::Error) -> RowProblem {
    let full = e.to_string();
    let message = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    };
    let message = if message == "trailing characters" {
        "unexpected characters after the JSON value".to_string()
    } else if message.contains("hex escape") {
        format!("{message} (a \\u escape of a lone UTF-16 surrogate has no UTF-8 form)")
    } else if message.starts_with("EOF while parsing") {
        format!("{message} (the line ends before the JSON value does)")
    } else {
        message
    };
    RowProblem {
        column: (e.column() > 0).then_some(e.column()),
        message,
    }
}

struct RowSeed<'s> {
    schema: &'s RequestSchema,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Vec<Option<Cow<'de, str>>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = Vec<Option<Cow<'de, str>>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let fields = &self.schema.fields;
        let mut values: Vec<Option<Cow<'de, str>>> = vec![None; fields.len()];
        let mut seen = vec![false; fields.len()];
        while let Some(key) = map.next_key::<StrSeed>()? {
            let Some(i) = fields.iter().position(|f| f.name == *key.0) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key \"{}\"",
                    fields[i].name
                )));
            }
            values[i] = match fields[i].kind {
                FieldKind::String => map
                    .next_value::<Option<StrSeed>>()
                    .map_err(|e| field_error::<A>(&fields[i].name, e))?
                    .map(|s| s.0),
                FieldKind::Json => {
                    let raw: &'de RawValue = map.next_value()?;
                    (raw.get() != "null").then_some(Cow::Borrowed(raw.get()))
                }
                FieldKind::Bool => map
                    .next_value::<Option<bool>>()
                    .map_err(|e| field_error::<A>(&fields[i].name, e))?
                    .map(|b| Cow::Borrowed(if b { "true" } else { "false" })),
                FieldKind::StringList => {
                    let raw: &'de RawValue = map.next_value()?;
                    if raw.get() == "null" {
                        None
                    } else {
                        serde_json::from_str::<Vec<StrSeed>>(raw.get()).map_err(|e| {
                            let msg = e.to_string();
                            let msg = msg.find(" at line ").map_or(msg.as_str(), |i| &msg[..i]);
                            de::Error::custom(format_args!(
                                "field \"{}\": {msg} (expected a list of strings)",
                                fields[i].name
                            ))
                        })?;
                        Some(Cow::Borrowed(raw.get()))
                    }
                }
                FieldKind::Literal(want) => {
                    let v = map
                        .next_value::<Option<StrSeed>>()
                        .map_err(|e| field_error::<A>(&fields[i].name, e))?;
                    match v {
                        Some(s) if s.0 != want => {
                            return Err(de::Error::custom(format_args!(
                                "field \"{}\": expected {want:?}, found {:?}",
                                fields[i].name, s.0
                            )))
                        }
                        v => v.map(|s| s.0),
                    }
                }
                FieldKind::Refused(why) => {
                    let raw: &'de RawValue = map.next_value()?;
                    if raw.get() != "null" {
                        return Err(de::Error::custom(format_args!(
                            "field \"{}\" is not accepted: {why}",
                            fields[i].name
                        )));
                    }
                    None
                }
            };
        }
        Ok(values)
    }
}

fn field_error<'de, A: MapAccess<'de>>(name: &str, e: A::Error) -> A::Error {
    let msg = e.to_string();
    let msg = msg.find(" at line ").map_or(msg.as_str(), |i| &msg[..i]);
    de::Error::custom(format_args!("field \"{name}\": {msg}"))
}

/// A string that borrows from the input when it has no escapes.
struct StrSeed<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for StrSeed<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrSeed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StrSeed(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StrSeed(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(StrSeed(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_schema() -> RequestSchema {
        RequestSchema {
            fields: vec![
                FieldSpec {
                    name: "text".into(),
                    kind: FieldKind::String,
                    required: true,
                },
                FieldSpec {
                    name: "id".into(),
                    kind: FieldKind::Json,
                    required: false,
                },
            ],
            ..RequestSchema::default()
        }
    }

    fn err(line: &[u8]) -> String {
        parse_row(line, &text_schema()).unwrap_err().message
    }

    #[test]
    fn reads_fields_and_borrows_plain_strings() {
        let row = parse_row(br#" {"id": 7, "text": "hi", "x": [1,{}]} "#, &text_schema()).unwrap();
        assert!(matches!(row.values[0], Some(Cow::Borrowed("hi"))));
        assert_eq!(row.values[1].as_deref(), Some("7"));
        assert_eq!(row.raw, r#"{"id": 7, "text": "hi", "x": [1,{}]}"#);
        let row = parse_row(br#"{"text": "a\nb\u00e9", "id": null}"#, &text_schema()).unwrap();
        assert_eq!(row.values[0].as_deref(), Some("a\nbé"));
        assert_eq!(row.values[1], None);
    }

    #[test]
    fn refuses_what_the_policy_refuses() {
        assert!(err(b"{\"text\": 5}")
            .contains("field \"text\": invalid type: integer `5`, expected a string"));
        assert_eq!(
            err(b"{\"id\": 1}"),
            "missing field \"text\" (expected a string)"
        );
        assert!(err(b"[1,2]").contains("expected a JSON object"));
        assert!(err(b"{\"text\": \"a\"} x").contains("after the JSON value"));
        assert!(err(b"{\"text\": \"a\"").contains("EOF while parsing"));
        assert!(err(b"{\"text\": \"a\", \"text\": \"b\"}").contains("duplicate key \"text\""));
        assert!(err(b"{\"text\": \"\\ud800\"}").contains("surrogate"));
        assert!(err(b"{\"text\": \"\\udc00x\"}").contains("surrogate"));
        // Not read, so not decoded: passed through as it is.
        let row = parse_row(b"{\"text\": \"a\", \"o\": \"\\ud800\"}", &text_schema()).unwrap();
        assert!(row.raw.contains("\\ud800"));
        assert_eq!(err(b"{\"text\": \"\xff\"}"), "invalid UTF-8 at byte 11");
        let deep = format!(
            "{{\"text\":\"a\",\"d\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse_row(deep.as_bytes(), &text_schema()).is_ok());
        let deep = format!(
            "{{\"text\":\"a\",\"id\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse_row(deep.as_bytes(), &text_schema()).is_ok());
        let unclosed = format!("{{\"text\":\"a\",\"d\":{}}}", "[".repeat(100_000));
        assert!(parse_row(unclosed.as_bytes(), &text_schema()).is_err());
    }

    #[test]
    fn typed_kinds_check_their_values() {
        let field = |name: &str, kind, required| FieldSpec {
            name: name.into(),
            kind,
            required,
        };
        let schema = RequestSchema {
            fields: vec![
                field("texts", FieldKind::StringList, true),
                field("flag", FieldKind::Bool, false),
                field("type", FieldKind::Literal("embedding"), true),
                field("images", FieldKind::Refused("no images"), false),
            ],
            ..RequestSchema::default()
        };
        let ok = parse_row(
            br#"{"texts": ["a", "\u00e9"], "flag": false, "type": "embedding", "images": null}"#,
            &schema,
        )
        .unwrap();
        assert_eq!(ok.values[0].as_deref(), Some(r#"["a", "\u00e9"]"#));
        assert_eq!(ok.values[1].as_deref(), Some("false"));
        let err = |line: &str| parse_row(line.as_bytes(), &schema).unwrap_err().message;
        assert!(err(r#"{"texts": ["a", 1], "type": "embedding"}"#)
            .starts_with("field \"texts\": invalid type: integer `1`, expected a string"));
        assert!(err(r#"{"texts": ["\ud800"], "type": "embedding"}"#).contains("texts"));
        assert!(err(r#"{"texts": [], "flag": 1, "type": "embedding"}"#).contains("field \"flag\""));
        assert_eq!(
            err(r#"{"texts": [], "type": "image"}"#),
            "field \"type\": expected \"embedding\", found \"image\""
        );
        assert_eq!(
            err(r#"{"texts": [], "type": "embedding", "images": ["x"]}"#),
            "field \"images\" is not accepted: no images"
        );
        assert_eq!(
            err(r#"{"type": "embedding"}"#),
            "missing field \"texts\" (expected a list of strings)"
        );
    }

    #[test]
    fn lines_split_on_lf_and_drop_cr() {
        let data = b"a\r\n\r\nb\nc";
        let lines: Vec<_> = Lines::new(data, 0, 1).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].bytes, b"a");
        assert!(lines[1].is_blank());
        assert_eq!((lines[3].number, lines[3].bytes), (4, &b"c"[..]));
    }

    #[test]
    fn excerpts_are_short() {
        let long = vec![b'x'; 10_000];
        let e = excerpt(&long, Some(5000));
        assert!(e.chars().count() < 50, "{e}");
    }
}
