//! The output directory: prepared before a run (new, or resumed from its
//! manifest), finalized after it.
//!
//! ```text
//!  prepare:  no manifest → must hold none but stook's files (removed: never trusted)
//!                          → header line written
//!            manifest    → fingerprints compared (refused, naming the change)
//!                          → every committed part verified (size, CRC-32); a bad one is redone
//!                          → anything not in the manifest removed
//!  finalize: _errors.jsonl assembled from the shards' bad rows, the optional
//!            assembled output, then _SUCCESS
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use stook_actors::checkpoint::{
    errors_name, sync_dir, verify, write_atomic, InputFingerprint, Manifest, ManifestHeader,
    Resume, ShardRecord, ERRORS, MANIFEST, SUCCESS,
};

use crate::config::JobConfig;
use crate::runner::{RunError, REPORT};

/// Whether `name` is one of the files stook writes in an output directory.
pub fn is_ours(name: &str) -> bool {
    name.starts_with("part-")
        || name.starts_with("_errors-")
        || (name.starts_with('.') && name.ends_with(".tmp"))
        || [MANIFEST, ERRORS, SUCCESS, REPORT].contains(&name)
}

/// The manifest header for `config` over its input now.
pub fn header_for(
    config: &JobConfig,
    model_fingerprint: String,
) -> Result<ManifestHeader, RunError> {
    let input = InputFingerprint::of(&config.input.path).map_err(|source| RunError::Output {
        path: config.input.path.clone(),
        source,
    })?;
    let mut c = BTreeMap::new();
    let mut put = |k: &str, v: serde_json::Value| {
        c.insert(k.to_string(), v);
    };
    put("model.backend", config.model.backend.clone().into());
    put(
        "model.options",
        serde_json::to_value(&config.model.options).unwrap_or_default(),
    );
    if !model_fingerprint.is_empty() {
        put("model.files", model_fingerprint.into());
    }
    put("batch.size", config.batch.size.into());
    put("checkpoint.shard_rows", config.checkpoint.shard_rows.into());
    put("output.preserve_order", config.output.preserve_order.into());
    put("input.max_line_bytes", config.input.max_line_bytes.0.into());
    Ok(ManifestHeader::new(input, c))
}

/// What `prepare` found.
pub struct Prepared {
    /// What to skip.
    pub resume: Resume,
    /// Shards redone because their files did not verify.
    pub redone: Vec<String>,
}

/// Makes `dir` ready for a run with `header`: a new output, or a verified
/// resume of an earlier one.
pub fn prepare(
    dir: &Path,
    header: &ManifestHeader,
    fresh: bool,
    resume: bool,
) -> Result<Prepared, RunError> {
    let io = |path: PathBuf| move |source| RunError::Output { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    let entries = list(dir)?;
    if let Some(other) = entries.iter().find(|n| !is_ours(n)) {
        return Err(RunError::OutputNotEmpty {
            dir: dir.to_path_buf(),
            found: other.clone(),
        });
    }
    let manifest = if fresh {
        None
    } else {
        Manifest::read(dir).map_err(|e| RunError::Resume {
            dir: dir.to_path_buf(),
            why: e.to_string(),
        })?
    };
    let Some(mut manifest) = manifest else {
        // Nothing committed: whatever is here is garbage.
        remove_all(dir, &entries)?;
        let mut text = serde_json::to_vec(header)
            .map_err(|e| io(dir.join(MANIFEST))(std::io::Error::other(e)))?;
        text.push(b'\n');
        write_atomic(dir, MANIFEST, &text).map_err(io(dir.join(MANIFEST)))?;
        return Ok(Prepared {
            resume: Resume::default(),
            redone: Vec::new(),
        });
    };
    if !resume {
        return Err(RunError::Resume {
            dir: dir.to_path_buf(),
            why: "it holds a manifest and checkpoint.resume = false; pass --fresh to start over"
                .into(),
        });
    }
    if let Some(why) = manifest.header.refuse(header) {
        return Err(RunError::Resume {
            dir: dir.to_path_buf(),
            why: format!("{why}; pass --fresh to start over"),
        });
    }
    // The last record of a shard wins; one whose files do not verify is redone.
    let mut latest: BTreeMap<u64, ShardRecord> = BTreeMap::new();
    for s in manifest.shards.drain(..) {
        latest.insert(s.shard, s);
    }
    let mut kept = Vec::new();
    let mut redone = Vec::new();
    for (_, s) in latest {
        match verify(dir, &s) {
            Ok(()) => kept.push(s),
            Err(why) => {
                tracing::warn!(shard = s.shard, %why, "committed shard does not verify; redoing it");
                redone.push(why);
            }
        }
    }
    let keep: BTreeSet<String> = kept
        .iter()
        .flat_map(|s| {
            let mut names = vec![s.part.clone()];
            if s.errors_bytes > 0 {
                names.push(errors_name(s.shard));
            }
            names
        })
        .chain([MANIFEST.to_string()])
        .collect();
    let garbage: Vec<String> = entries.into_iter().filter(|n| !keep.contains(n)).collect();
    remove_all(dir, &garbage)?;
    manifest.shards = kept;
    manifest.rewrite(dir).map_err(io(dir.join(MANIFEST)))?;
    Ok(Prepared {
        resume: Resume::from_shards(&manifest.shards),
        redone,
    })
}

fn list(dir: &Path) -> Result<Vec<String>, RunError> {
    let io = |source| RunError::Output {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        names.push(entry.map_err(io)?.file_name().to_string_lossy().to_string());
    }
    names.sort();
    Ok(names)
}

fn remove_all(dir: &Path, names: &[String]) -> Result<(), RunError> {
    for n in names {
        let p = dir.join(n);
        std::fs::remove_file(&p).map_err(|source| RunError::Output { path: p, source })?;
    }
    sync_dir(dir).map_err(|source| RunError::Output {
        path: dir.to_path_buf(),
        source,
    })
}

/// Totals over every committed shard.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    /// Input rows.
    pub rows: u64,
    /// Bad rows.
    pub errors: u64,
    /// Shards.
    pub shards: u64,
}

/// After a complete run: assembles `_errors.jsonl` (and `assemble`, if
/// set) from the shards in order, then writes `_SUCCESS`.
pub fn finalize(dir: &Path, assemble: Option<&Path>) -> Result<Totals, RunError> {
    let manifest = Manifest::read(dir)
        .map_err(|e| RunError::Resume {
            dir: dir.to_path_buf(),
            why: e.to_string(),
        })?
        .ok_or_else(|| RunError::Resume {
            dir: dir.to_path_buf(),
            why: "the manifest disappeared".into(),
        })?;
    let mut shards = manifest.shards;
    shards.sort_by_key(|s| s.shard);
    let errors: Vec<String> = shards
        .iter()
        .filter(|s| s.errors_bytes > 0)
        .map(|s| errors_name(s.shard))
        .collect();
    let io = |name: &str| {
        let path = dir.join(name);
        move |source| RunError::Output { path, source }
    };
    if !errors.is_empty() {
        concat(dir, &errors, &dir.join(ERRORS)).map_err(io(ERRORS))?;
    }
    if let Some(target) = assemble {
        let parts: Vec<String> = shards.iter().map(|s| s.part.clone()).collect();
        concat(dir, &parts, target).map_err(|source| RunError::Output {
            path: target.to_path_buf(),
            source,
        })?;
    }
    write_atomic(dir, SUCCESS, b"").map_err(io(SUCCESS))?;
    Ok(Totals {
        rows: shards.iter().map(|s| s.rows).sum(),
        errors: shards.iter().map(|s| s.errors).sum(),
        shards: shards.len() as u64,
    })
}

/// Writes the concatenation of `dir/names` to `target`, atomically.
fn concat(dir: &Path, names: &[String], target: &Path) -> std::io::Result<()> {
    let parent = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for n in names {
        std::io::copy(&mut std::fs::File::open(dir.join(n))?, &mut out)?;
    }
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, target)?;
    sync_dir(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_are_recognised() {
        for n in [
            "part-00001.jsonl",
            "_errors-00002.jsonl",
            ".part-00003.jsonl.tmp",
            "_SUCCESS",
            "_manifest.jsonl",
        ] {
            assert!(is_ours(n), "{n}");
        }
        for n in ["notes.txt", ".bashrc", "results.parquet"] {
            assert!(!is_ours(n), "{n}");
        }
    }
}
