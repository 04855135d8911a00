//! The checkpoint protocol on object storage, where nothing can be renamed
//! or appended to.
//!
//! ```text
//!  staging dir (local, this worker's)        bucket prefix (the output)
//!  part-00007.jsonl  ── committed ──▶ PUT part-00007.jsonl (create-only;
//!                                         multipart when large: whole or
//!                                         nothing) ─▶ local copy removed
//!  _manifest….jsonl  ── record appended ─▶ PUT _manifest….jsonl (replaced
//!                                         whole, after the part is there)
//! ```
//!
//! The bucket is the truth. Before a run, [`Staged::pull`] refuses a prefix
//! holding anything not stook's, and copies every manifest down; the
//! protocol's `prepare` then runs on the staging directory, verifying each
//! recorded shard against the object in the bucket (length and CRC-32,
//! streamed), and [`Staged::push_prepared`] deletes this worker's objects
//! that its manifest does not record (a part uploaded by a run killed
//! before its manifest said so is redone, never trusted) and uploads the
//! manifest. A part's final name is only ever written by a create-only PUT.
//! No secret is written anywhere: URLs hold none, credentials stay in the
//! environment.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::checkpoint::{is_manifest, shard_of, Manifest, ShardRecord, Worker, SUCCESS};
use crate::remote::Location;

use super::protocol::{is_ours, CheckpointError};

/// An output prefix in object storage and this worker's staging directory.
#[derive(Clone, Debug)]
pub struct Staged {
    /// Where files are written before they are uploaded.
    pub staging: PathBuf,
    /// The output prefix.
    pub loc: Location,
    /// Removes a staging directory of this process's own when the last
    /// clone drops ([`Staged::inspecting`]).
    _own: Option<std::sync::Arc<OwnDir>>,
}

/// A directory this process made for itself, removed when dropped.
#[derive(Debug)]
struct OwnDir(PathBuf);

impl Drop for OwnDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> CheckpointError {
    let path = path.into();
    move |source| CheckpointError::Io { path, source }
}

impl Staged {
    /// The prefix `url` names, staged in `staging` (made if missing) or
    /// else in a directory of the system's temporary directory named after
    /// the URL and `worker`.
    pub fn new(url: &Path, worker: Worker, staging: Option<&Path>) -> io::Result<Self> {
        let loc = Location::parse(url)?;
        let dir = match staging {
            Some(s) => s.to_path_buf(),
            None => std::env::temp_dir().join("stook-staging").join(format!(
                "{:08x}-{}",
                crc32fast::hash(loc.url().as_bytes()),
                worker.manifest_name().trim_end_matches(".jsonl")
            )),
        };
        std::fs::create_dir_all(&dir)?;
        Ok(Staged {
            staging: dir,
            loc,
            _own: None,
        })
    }

    /// The prefix `url` names, staged in a new directory of this process's
    /// own (removed when the last clone drops), for `stook status` and
    /// `stook merge`: never the staging directory a running worker appends
    /// its manifest to.
    pub fn inspecting(url: &Path) -> io::Result<Self> {
        let loc = Location::parse(url)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join("stook-staging").join(format!(
            ".inspect-{:08x}-{}-{nanos}",
            crc32fast::hash(loc.url().as_bytes()),
            std::process::id()
        ));
        std::fs::create_dir_all(super::parent_of(&dir))?;
        // A new name: refused if it exists, so the directory is this run's.
        std::fs::create_dir(&dir)?;
        Ok(Staged {
            staging: dir.clone(),
            loc,
            _own: Some(std::sync::Arc::new(OwnDir(dir))),
        })
    }

    /// The URL, as messages show it.
    pub fn shown(&self) -> PathBuf {
        PathBuf::from(self.loc.url())
    }

    fn names(&self) -> Result<Vec<String>, CheckpointError> {
        self.loc.names().map_err(io_at(self.shown()))
    }

    /// The names directly under the prefix, refused when one is not stook's
    /// (as a local output directory is).
    fn ours(&self) -> Result<Vec<String>, CheckpointError> {
        let remote = self.names()?;
        if let Some(other) = remote.iter().find(|n| !is_ours(n)) {
            return Err(CheckpointError::OutputNotEmpty {
                dir: self.shown(),
                found: other.clone(),
            });
        }
        Ok(remote)
    }

    /// Makes the staging directory a copy of the prefix's manifests and
    /// success marker (its other stook files removed); refuses a prefix
    /// holding anything not stook's.
    pub fn pull(&self) -> Result<(), CheckpointError> {
        let remote = self.ours()?;
        for e in std::fs::read_dir(&self.staging).map_err(io_at(&self.staging))? {
            let e = e.map_err(io_at(&self.staging))?;
            let name = e.file_name().to_string_lossy().to_string();
            // Only stook's own names; never the lock another copy holds.
            if is_ours(&name) && !name.ends_with(".lock") {
                std::fs::remove_file(e.path()).map_err(io_at(e.path()))?;
            }
        }
        for name in remote.iter().filter(|n| is_manifest(n) || *n == SUCCESS) {
            let data = self
                .loc
                .child(name)
                .get()
                .map_err(io_at(self.url_of(name)))?;
            super::write_atomic(&self.staging, name, &data).map_err(io_at(&self.staging))?;
        }
        Ok(())
    }

    fn url_of(&self, name: &str) -> PathBuf {
        PathBuf::from(self.loc.child(name).url())
    }

    /// Checks that the prefix can be listed and written: lists it (refusing
    /// one that holds anything not stook's), then writes and deletes a
    /// probe under a name stook owns (`._SUCCESS.tmp`, never a real file's).
    pub fn check_writable(&self) -> Result<(), CheckpointError> {
        self.ours()?;
        let probe = self.loc.child(&format!(".{SUCCESS}.tmp"));
        probe
            .put(bytes::Bytes::new(), false)
            .and_then(|()| probe.delete())
            .map_err(io_at(probe.url()))
    }

    /// Reads the object `name` under the prefix.
    pub fn open(&self, name: &str) -> io::Result<Box<dyn Read + Send>> {
        self.loc.child(name).open()
    }

    /// Deletes the object `name` under the prefix (one already gone is no
    /// error).
    pub fn delete(&self, name: &str) -> Result<(), CheckpointError> {
        self.loc
            .child(name)
            .delete()
            .map_err(io_at(self.url_of(name)))
    }

    /// Whether a shard's objects are as its record says.
    pub fn verify(&self, record: &ShardRecord) -> Result<(), String> {
        super::verify_with(record, &|name| self.open(name))
    }

    /// After `prepare` ran on the staging directory: deletes this worker's
    /// objects its manifest does not record, then uploads the manifest.
    pub fn push_prepared(&self, worker: Worker) -> Result<(), CheckpointError> {
        let own = worker.manifest_name();
        let manifest = Manifest::read(&self.staging, &own)
            .map_err(|e| CheckpointError::Resume {
                dir: self.shown(),
                why: e.to_string(),
            })?
            .ok_or_else(|| CheckpointError::Resume {
                dir: self.shown(),
                why: format!("{own} was not written"),
            })?;
        let mut keep: Vec<String> = vec![own.clone()];
        for s in &manifest.shards {
            keep.push(s.part.clone());
            if s.errors_bytes > 0 {
                keep.push(super::errors_beside(&s.part));
            }
        }
        for name in self.names()? {
            let workers = if worker.is_alone() {
                is_ours(&name)
            } else {
                name == own || shard_of(&name).is_some_and(|s| worker.owns(s))
            };
            if workers && !keep.contains(&name) {
                tracing::info!(object = %self.loc.child(&name).url(), "removing an object no manifest records");
                self.delete(&name)?;
            }
        }
        self.upload(&own, false)
    }

    /// Uploads the staged file `name` (create-only when `create`: a part's
    /// final name is written once); the local copy stays.
    pub fn upload(&self, name: &str, create: bool) -> Result<(), CheckpointError> {
        let target = self.loc.child(name);
        target
            .upload(&self.staging.join(name), create)
            .map_err(io_at(target.url()))
    }

    /// Publishes a committed shard: its bad rows and part (create-only),
    /// then the manifest that records it; the local part and bad-row files
    /// are then removed.
    pub fn publish(&self, record: &ShardRecord, manifest: &str) -> Result<(), CheckpointError> {
        let mut files = Vec::new();
        if record.errors_bytes > 0 {
            files.push(super::errors_beside(&record.part));
        }
        files.push(record.part.clone());
        for f in &files {
            self.upload(f, true)?;
        }
        self.upload(manifest, false)?;
        for f in &files {
            let p = self.staging.join(f);
            std::fs::remove_file(&p).map_err(io_at(p))?;
        }
        Ok(())
    }
}
