//! The config's units: sizes (`512 MiB`) and durations (`30s`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `"1.5 GiB"` → `("1.5", "GiB")`: the leading number and the unit after it.
fn number_and_unit(s: &str) -> (&str, &str) {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    (t[..split].trim(), t[split..].trim())
}

/// A duration, written `30s`, `500ms`, `2m`, `1h` or a number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Seconds(pub std::time::Duration);

impl FromStr for Seconds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (num, unit) = number_and_unit(s);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("expected a duration like \"30s\" or \"500ms\", found {s:?}"))?;
        let mult = match unit {
            "" | "s" => 1.0,
            "ms" => 1e-3,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            u => {
                return Err(format!(
                    "unknown unit {u:?} in {s:?}, expected ms, s, m or h"
                ))
            }
        };
        std::time::Duration::try_from_secs_f64(n * mult)
            .map(Seconds)
            .map_err(|_| format!("duration out of range: {s:?}"))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a duration: seconds or a string like \"30s\"")
        })? {
            Raw::N(n) => std::time::Duration::try_from_secs_f64(n)
                .map(Seconds)
                .map_err(|_| {
                    serde::de::Error::custom(format!("expected 0 or more seconds, found {n}"))
                }),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Seconds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0.as_secs_f64())
    }
}

/// A size in bytes, written `256MiB`, `64 MB`, `1GiB` or `1048576`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// As usize.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (num, unit) = number_and_unit(s);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("expected a size like \"256MiB\" or \"64 MB\", found {s:?}"))?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "kb" => 1000,
            "m" | "mib" => 1 << 20,
            "mb" => 1_000_000,
            "g" | "gib" => 1 << 30,
            "gb" => 1_000_000_000,
            "t" | "tib" => 1 << 40,
            "tb" => 1_000_000_000_000,
            _ => {
                return Err(format!(
                "unknown unit {unit:?} in {s:?}, expected B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
            ))
            }
        };
        let bytes = n * mult as f64;
        if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
            return Err(format!("size out of range: {s:?}"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        let units = [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (m, u) in units {
            if self.0 >= m {
                return write!(f, "{:.1} {u}", b / m as f64);
            }
        }
        write!(f, "{} B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a size: a number of bytes or a string like \"256MiB\"",
            )
        })? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}
