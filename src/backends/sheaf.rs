//! sheaf-serve's BatchRunner file format for embeddings, as a drop-in:
//! requests are its `EmbeddingRequest` lines, results its
//! `EmbeddingResponse` lines, byte for byte as Python's `json.dumps` writes
//! them (`", "` and `": "` separators, non-ASCII as `\uXXXX`, each float
//! the shortest repr of its f64 value).
//!
//! Unlike sheaf: a missing `request_id` gets an id derived from the input's
//! content and the row number (a rerun writes the same bytes), and a
//! missing or null `normalize` means true on every row.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use stook_actors::{FieldKind, FieldSpec, RequestSchema};

/// Columns of the sheaf schema, in [`schema`] order.
pub const TEXTS: usize = 0;
/// `model_name`.
pub const MODEL_NAME: usize = 1;
/// `request_id`.
pub const REQUEST_ID: usize = 3;
/// `normalize`.
pub const NORMALIZE: usize = 4;

/// What each `EmbeddingRequest` line must hold.
pub fn schema() -> RequestSchema {
    let f = |name: &str, kind, required| FieldSpec {
        name: name.into(),
        kind,
        required,
    };
    RequestSchema {
        fields: vec![
            f("texts", FieldKind::StringList, true),
            f("model_name", FieldKind::String, true),
            f("model_type", FieldKind::Literal("embedding"), true),
            f("request_id", FieldKind::String, false),
            f("normalize", FieldKind::Bool, false),
            f(
                "images_b64",
                FieldKind::Refused("image embeddings are not supported; this backend embeds texts"),
                false,
            ),
        ],
        keep_raw: false,
    }
}

/// A request id for a row that has none: a UUID-shaped digest of the
/// input's content key and the 0-based row number.
pub fn request_id(input_key: &str, row: u64) -> String {
    let mut h = Sha256::new();
    h.update(b"stook request_id\0");
    h.update(input_key.as_bytes());
    h.update(row.to_le_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8: custom
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Appends `s` as Python's `json.dumps` (ensure_ascii) writes a string.
pub fn push_str(out: &mut String, s: &str) {
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
pub fn push_float(out: &mut String, x: f64) {
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

/// One `EmbeddingResponse` line.
pub fn response(request_id: &str, model_name: &str, vectors: &[Vec<f32>], dim: usize) -> String {
    let mut out = String::with_capacity(128 + vectors.len() * dim * 22);
    out.push_str("{\"request_id\": ");
    push_str(&mut out, request_id);
    out.push_str(", \"model_type\": \"embedding\", \"model_name\": ");
    push_str(&mut out, model_name);
    out.push_str(", \"metadata\": {}, \"embeddings\": [");
    for (i, v) in vectors.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('[');
        for (k, &x) in v.iter().enumerate() {
            if k > 0 {
                out.push_str(", ");
            }
            push_float(&mut out, x as f64);
        }
        out.push(']');
    }
    let _ = write!(out, "], \"dim\": {dim}}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(x: f64) -> String {
        let mut s = String::new();
        push_float(&mut s, x);
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
        push_str(&mut s, "a\"\\\n\t\u{1}é€😀\u{7f}~");
        assert_eq!(s, r#""a\"\\\n\t\u0001\u00e9\u20ac\ud83d\ude00\u007f~""#);
    }

    #[test]
    fn responses_have_sheafs_keys_and_separators() {
        let r = response("r1", "m", &[vec![0.5, -1.0], vec![]], 2);
        assert_eq!(
            r,
            r#"{"request_id": "r1", "model_type": "embedding", "model_name": "m", "metadata": {}, "embeddings": [[0.5, -1.0], []], "dim": 2}"#
        );
        let a = request_id("k", 7);
        assert_eq!(a, request_id("k", 7));
        assert_ne!(a, request_id("k", 8));
        assert_ne!(a, request_id("j", 7));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
    }
}
