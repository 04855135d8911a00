//! A config's problems, each with its TOML key, and the deserialisers that
//! report every wrong key rather than the first.

use std::fmt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;

/// One problem in a config, with its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The TOML key, dotted (`batch.size`), or empty for the whole file.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ConfigProblem {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigProblem {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in one config file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The config file.
    pub path: PathBuf,
    /// The problems, in file order where known.
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.path.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            if p.key.is_empty() {
                write!(f, "\n  {}", p.message)?;
            } else {
                write!(f, "\n  {}: {}", p.key, p.message)?;
            }
        }
        Ok(())
    }
}

/// Deserialises a TOML table, reporting every key that is wrong, not only
/// the first: a failing key is noted and set aside, and the rest parsed
/// again (once per key at most).
pub fn parse_value_all<T: DeserializeOwned>(
    value: toml::Value,
    prefix: &str,
) -> Result<T, Vec<ConfigProblem>> {
    let mut value = value;
    let mut problems: Vec<ConfigProblem> = Vec::new();
    let mut set_aside: Vec<String> = Vec::new();
    loop {
        match parse_value::<T>(value.clone(), prefix) {
            Ok(v) if problems.is_empty() => return Ok(v),
            Ok(_) => return Err(problems),
            Err(p) => {
                // A required key set aside is missing now: no news.
                if set_aside
                    .iter()
                    .any(|k| p.message.contains(&format!("missing field `{k}`")))
                {
                    return Err(problems);
                }
                let key = p
                    .key
                    .strip_prefix(prefix)
                    .and_then(|k| k.strip_prefix('.'))
                    .and_then(|k| k.split(['.', '[']).next())
                    .map(str::to_string);
                problems.push(p);
                let removed = match (&mut value, key) {
                    (toml::Value::Table(t), Some(k)) => t.remove(&k).map(|_| k),
                    _ => None,
                };
                match removed {
                    Some(k) => set_aside.push(k),
                    None => return Err(problems),
                }
            }
        }
    }
}

/// Deserialises a TOML value, naming the failing key under `prefix`.
pub fn parse_value<T: DeserializeOwned>(
    value: toml::Value,
    prefix: &str,
) -> Result<T, ConfigProblem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." || path.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{path}")
        };
        let message = e.into_inner().to_string();
        let message = message.lines().next().unwrap_or_default().to_string();
        ConfigProblem::new(key, message)
    })
}
