//! Values that must differ on every row (`RequestSchema::unique`, the
//! OpenAI Batch format's `custom_id`): checked over the whole file before
//! the run, in two reads that hold 8 bytes per row at most.
//!
//! 1. Every row's value is hashed (64 bits); the hashes are sorted and a
//!    hash seen twice is kept.
//! 2. Only when there is one: the file is read again, and each value of a
//!    kept hash is remembered with its first line; a second sighting is an
//!    error naming both lines (equal hashes of different values are not).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use crate::error::PipelineError;
use crate::input::jsonl::{read_row, RowLimits, RELEASE_EVERY};
use crate::input::Input;
use crate::rows::{data_start, excerpt, Line, Lines, RequestSchema, RowError};

/// The repeated values of the schema's unique field: how many rows repeat
/// an earlier one, and the first `keep` of them as errors (in input order).
pub(crate) fn repeats(
    input: &Input,
    schema: &RequestSchema,
    limits: &RowLimits,
    keep: usize,
) -> Result<(u64, Vec<RowError>), PipelineError> {
    let Some(field) = schema.unique else {
        return Ok((0, Vec::new()));
    };
    let mut hashes = Vec::new();
    each_value(input, schema, limits, field, |_, _, v| hashes.push(hash(v)))?;
    hashes.sort_unstable();
    let twice: HashSet<u64> = hashes
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    drop(hashes);
    if twice.is_empty() {
        return Ok((0, Vec::new()));
    }
    let name = &schema.fields[field].name;
    let path: std::sync::Arc<str> = input.path().display().to_string().into();
    let (mut first, mut count, mut errors) = (HashMap::new(), 0u64, Vec::new());
    each_value(input, schema, limits, field, |row, line, v| {
        if !twice.contains(&hash(v)) {
            return;
        }
        match first.get(v) {
            None => {
                first.insert(v.to_string(), line.number);
            }
            Some(&earlier) => {
                count += 1;
                if errors.len() < keep {
                    errors.push(RowError {
                        path: path.clone(),
                        line: line.number,
                        row,
                        column: None,
                        message: format!(
                            "\"{name}\" {v:?} is already on line {earlier}; each row's must be \
                             unique"
                        ),
                        excerpt: excerpt(line.bytes, None),
                        place: None,
                    });
                }
            }
        }
    })?;
    Ok((count, errors))
}

fn hash(v: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Calls `f(row, line, value)` for every row whose line reads and has the
/// field, in input order.
fn each_value(
    input: &Input,
    schema: &RequestSchema,
    limits: &RowLimits,
    field: usize,
    mut f: impl FnMut(u64, &Line<'_>, &str),
) -> Result<(), PipelineError> {
    let mut row = 0u64;
    let mut one = |line: &Line<'_>, len: usize| {
        if line.is_blank() {
            return;
        }
        if let Ok(parsed) = read_row(line, len, schema, limits) {
            if let Some(v) = &parsed.values[field] {
                f(row, line, v);
            }
        }
        row += 1;
    };
    match input {
        Input::Mapped(file) => {
            let data = file.bytes();
            let mut released = 0;
            for line in Lines::new(data, data_start(data), 1) {
                if line.offset - released >= RELEASE_EVERY {
                    file.release(released, line.offset);
                    released = line.offset;
                }
                one(&line, line.bytes.len());
            }
            file.release(released, data.len());
        }
        Input::Stream(file) => {
            let mut lines = file.lines()?;
            let mut buf = Vec::new();
            while let Some((number, len)) = lines.next_line(&mut buf, limits.max_line_bytes + 1)? {
                let line = Line {
                    number,
                    offset: 0,
                    bytes: &buf,
                };
                one(&line, len);
            }
        }
        // Refused before: a table has no lines to name.
        Input::Table(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::{FieldKind, FieldSpec};

    #[test]
    fn repeats_name_both_lines_and_only_real_repeats() {
        let dir = std::env::temp_dir().join(format!("stook-unique-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.jsonl");
        std::fs::write(
            &path,
            "{\"k\":\"a\"}\n\n{\"k\":\"b\"}\n{\"k\":5}\nnot json\n{\"k\":\"a\"}\n{}\n{\"k\":\"a\"}\n",
        )
        .unwrap();
        let schema = RequestSchema {
            fields: vec![FieldSpec {
                name: "k".into(),
                kind: FieldKind::String,
                required: false,
            }],
            answer_bad_rows: true,
            unique: Some(0),
            ..RequestSchema::default()
        };
        let limits = RowLimits {
            max_line_bytes: 1 << 20,
        };
        let input = Input::open(&path, None, None).unwrap();
        let (count, errors) = repeats(&input, &schema, &limits, 1).unwrap();
        assert_eq!((count, errors.len()), (2, 1));
        let e = &errors[0];
        assert_eq!((e.line, e.row), (6, 4));
        assert!(
            e.to_string()
                .contains(":6: \"k\" \"a\" is already on line 1; each row's must be unique"),
            "{e}"
        );
        std::fs::write(&path, "{\"k\":\"a\"}\n{\"k\":\"b\"}\n").unwrap();
        let input = Input::open(&path, None, None).unwrap();
        assert_eq!(repeats(&input, &schema, &limits, 9).unwrap().0, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
