//! The checkpoint protocol, in one place: an output directory prepared
//! before a run (new, or resumed from its manifest), and merged after it;
//! what `stook status` and `stook merge` read.
//!
//! ```text
//!  prepare:  lock this worker's slot (a second process on it is refused)
//!            no manifest → must hold none but stook's files; this worker's are removed
//!                          → header line written
//!            manifest    → fingerprints compared (refused, naming the change)
//!                          → every committed part verified (size, CRC-32); a bad one is redone
//!                          → this worker's files not in its manifest removed
//!  run:      the Sink commits each shard ([`super::AtomicFile`]) then appends its record
//!  merge:    every worker's manifest: same split, same input and config
//!            → every batch of the input committed (else refused, naming the shards)
//!            → every part verified → _errors.jsonl, the optional assembled output, _SUCCESS
//! ```
//!
//! A worker touches only its own files (see [`super`]), so workers of one
//! split share a directory safely. Errors say what is wrong with which file
//! ([`CheckpointError`]); which config key leads there is the caller's to say.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::remote::Staged;
use super::{
    errors_beside, is_manifest, is_worker_file, shard_of, sync_dir, verify, write_atomic,
    AtomicFile, Manifest, ManifestError, ManifestHeader, Resume, ShardRecord, Worker, ERRORS,
    SUCCESS,
};

/// Why an output directory cannot be prepared, read or merged.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The output directory holds files that are not stook's.
    #[error("{}: the output directory is not empty (it holds {found})", .dir.display())]
    OutputNotEmpty {
        /// The directory.
        dir: PathBuf,
        /// One file found.
        found: String,
    },
    /// The output directory holds a manifest, and the run was asked not
    /// to resume.
    #[error("{}: cannot resume: it holds {manifest} and resuming is off", .dir.display())]
    ResumeOff {
        /// The output directory.
        dir: PathBuf,
        /// The manifest found.
        manifest: String,
    },
    /// The manifest was written for another input or config.
    #[error("{}: cannot resume: {why}", .dir.display())]
    Changed {
        /// The output directory.
        dir: PathBuf,
        /// What changed.
        why: String,
    },
    /// The directory holds the files of a split into another worker count.
    #[error(
        "{}: cannot resume: {manifest} belongs to a split into {count} worker(s), and this run \
         is worker {worker}",
        .dir.display()
    )]
    OtherSplit {
        /// The output directory.
        dir: PathBuf,
        /// The other split's manifest.
        manifest: String,
        /// Its worker count.
        count: u64,
        /// This run's worker.
        worker: Worker,
    },
    /// The output directory's manifests cannot be read.
    #[error("{}: cannot resume: {why}", .dir.display())]
    Resume {
        /// The output directory.
        dir: PathBuf,
        /// Why not.
        why: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another stook process holds a lock in the output directory that a
    /// run alone would clear.
    #[error(
        "{}: another stook process is running on this output directory (it holds {lock}); \
         wait for it or stop it",
        .dir.display()
    )]
    InUse {
        /// The output directory.
        dir: PathBuf,
        /// The lock file held.
        lock: String,
    },
    /// Another process runs the same worker on this output directory.
    #[error(
        "{}: another stook process is running worker {worker} on this output directory \
         (it holds the lock); wait for it or stop it",
        .dir.display()
    )]
    Busy {
        /// The output directory.
        dir: PathBuf,
        /// The worker.
        worker: Worker,
    },
    /// `merge` found shards missing, stale or damaged.
    #[error("{}: cannot merge: {why}", .dir.display())]
    Incomplete {
        /// The output directory.
        dir: PathBuf,
        /// What is missing or wrong.
        why: String,
    },
}

impl CheckpointError {
    /// The same error, naming `shown` where it names the directory `dir`
    /// (a staging directory's errors name the bucket prefix it stands for).
    pub fn shown_as(mut self, dir: &Path, shown: &Path) -> Self {
        use CheckpointError as E;
        match &mut self {
            E::OutputNotEmpty { dir: d, .. }
            | E::ResumeOff { dir: d, .. }
            | E::Changed { dir: d, .. }
            | E::OtherSplit { dir: d, .. }
            | E::Resume { dir: d, .. }
            | E::InUse { dir: d, .. }
            | E::Busy { dir: d, .. }
            | E::Incomplete { dir: d, .. }
            | E::Io { path: d, .. } => {
                if let Ok(rest) = d.strip_prefix(dir) {
                    *d = if rest.as_os_str().is_empty() {
                        shown.to_path_buf()
                    } else {
                        PathBuf::from(format!("{}/{}", shown.display(), rest.display()))
                    };
                }
            }
        }
        self
    }
}

/// The report's stem in the output directory (`_report.json` alone,
/// `_report-0000I-of-0000N.json` for worker I of N).
pub const REPORT_STEM: &str = "_report";

/// Whether `name` is one of the files stook writes in an output directory,
/// by its exact pattern (a file whose name only looks like one, such as
/// Spark's `part-00000-….snappy.parquet` or a `_report_2025.pdf`, is not):
/// parts and bad-row files of a shard, manifests, reports, `_errors.jsonl`,
/// `_SUCCESS`, and any of those being written (`.NAME.tmp`) or a manifest's
/// lock (`.NAME.lock`).
pub fn is_ours(name: &str) -> bool {
    let own = |n: &str| {
        shard_of(n).is_some()
            || is_manifest(n)
            || is_worker_file(n, REPORT_STEM, "json")
            || [ERRORS, SUCCESS].contains(&n)
    };
    if let Some(inner) = name.strip_prefix('.') {
        if let Some(n) = inner.strip_suffix(".tmp") {
            return own(n);
        }
        if let Some(n) = inner.strip_suffix(".lock") {
            return is_manifest(n);
        }
    }
    own(name)
}

/// What `prepare` found.
pub struct Prepared {
    /// What to skip.
    pub resume: Resume,
    /// Shards redone because their files did not verify.
    pub redone: Vec<String>,
    /// This worker's lock, held until dropped.
    pub lock: File,
}

/// Takes this worker's lock in `dir` (an advisory `flock`, released when the
/// process ends however it ends): a second process for the same worker, such
/// as a retried task whose first copy still runs, is refused.
fn lock(dir: &Path, worker: Worker) -> Result<File, CheckpointError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(format!(".{}.lock", worker.manifest_name()));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| CheckpointError::Io {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on an fd this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(CheckpointError::Busy {
            dir: dir.to_path_buf(),
            worker,
        });
    }
    Ok(file)
}

/// Whether another process holds the lock file `path` (its flock).
fn is_held(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = File::open(path) else {
        return false;
    };
    // SAFETY: flock on an fd this function owns; released when it closes.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
}

/// Whether `name` in the output directory is `worker`'s to write or remove.
fn is_workers(worker: Worker, name: &str) -> bool {
    if worker.is_alone() {
        return is_ours(name);
    }
    let manifest = worker.manifest_name();
    let report = worker.file_name(REPORT_STEM, "json");
    name == manifest
        || name == format!(".{manifest}.tmp")
        || name == report
        || name == SUCCESS
        || shard_of(name).is_some_and(|s| worker.owns(s))
}

/// Makes `dir` ready for `header.worker`'s run: a new output, or a verified
/// resume of an earlier one.
pub fn prepare(
    dir: &Path,
    header: &ManifestHeader,
    fresh: bool,
    resume: bool,
) -> Result<Prepared, CheckpointError> {
    prepare_in(dir, header, fresh, resume, &|s| verify(dir, s))
}

/// [`prepare`] for an output prefix in object storage: the prefix's
/// manifests are copied to the staging directory, prepared there with each
/// recorded shard verified against its objects, and this worker's objects
/// that its manifest does not record are deleted (see [`super::remote`]).
pub fn prepare_staged(
    staged: &Staged,
    header: &ManifestHeader,
    fresh: bool,
    resume: bool,
) -> Result<Prepared, CheckpointError> {
    let shown = |e: CheckpointError| e.shown_as(&staged.staging, &staged.shown());
    staged.pull().map_err(shown)?;
    let p = prepare_in(&staged.staging, header, fresh, resume, &|s| {
        staged.verify(s)
    })
    .map_err(shown)?;
    staged.push_prepared(header.worker).map_err(shown)?;
    Ok(p)
}

fn prepare_in(
    dir: &Path,
    header: &ManifestHeader,
    fresh: bool,
    resume: bool,
    check: &dyn Fn(&ShardRecord) -> Result<(), String>,
) -> Result<Prepared, CheckpointError> {
    let io = |path: PathBuf| move |source| CheckpointError::Io { path, source };
    let worker = header.worker;
    let own = worker.manifest_name();
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    let refuse_foreign = |entries: &[String]| match entries.iter().find(|n| !is_ours(n)) {
        Some(other) => Err(CheckpointError::OutputNotEmpty {
            dir: dir.to_path_buf(),
            found: other.clone(),
        }),
        None => Ok(()),
    };
    // A directory that is not stook's gets nothing, not even a lock file;
    // looked at again once the lock is held.
    refuse_foreign(&list(dir)?)?;
    let lock = lock(dir, worker)?;
    let entries = list(dir)?;
    if worker.is_alone() {
        // A run alone owns the whole directory: not while a split's worker
        // still runs in it (its lock is held).
        let own_lock = format!(".{own}.lock");
        for name in entries
            .iter()
            .filter(|n| n.ends_with(".lock") && **n != own_lock)
        {
            if is_ours(name) && is_held(&dir.join(name)) {
                return Err(CheckpointError::InUse {
                    dir: dir.to_path_buf(),
                    lock: name.clone(),
                });
            }
        }
    }
    refuse_foreign(&entries)?;
    let unreadable = |e: ManifestError| CheckpointError::Resume {
        dir: dir.to_path_buf(),
        why: e.to_string(),
    };
    // Another split's files would share part names with this one's.
    if !(worker.is_alone() && fresh) {
        for (name, m) in Manifest::read_all(dir).map_err(unreadable)? {
            if name != own && m.header.worker.count != worker.count {
                return Err(CheckpointError::OtherSplit {
                    dir: dir.to_path_buf(),
                    manifest: name,
                    count: m.header.worker.count,
                    worker,
                });
            }
        }
    }
    let mine: Vec<String> = entries
        .into_iter()
        .filter(|n| is_workers(worker, n) && !n.ends_with(".lock"))
        .collect();
    let manifest = if fresh {
        None
    } else {
        Manifest::read(dir, &own).map_err(unreadable)?
    };
    let Some(mut manifest) = manifest else {
        // Nothing committed: whatever of this worker's is here is garbage.
        remove_all(dir, &mine)?;
        let mut text =
            serde_json::to_vec(header).map_err(|e| io(dir.join(&own))(std::io::Error::other(e)))?;
        text.push(b'\n');
        write_atomic(dir, &own, &text).map_err(io(dir.join(&own)))?;
        return Ok(Prepared {
            resume: Resume::default(),
            redone: Vec::new(),
            lock,
        });
    };
    if !resume {
        return Err(CheckpointError::ResumeOff {
            dir: dir.to_path_buf(),
            manifest: own,
        });
    }
    if let Some(why) = manifest.header.refuse(header) {
        return Err(CheckpointError::Changed {
            dir: dir.to_path_buf(),
            why,
        });
    }
    // The last record of a shard wins; one whose files do not verify is redone.
    let mut kept = Vec::new();
    let mut redone = Vec::new();
    for (_, s) in latest(manifest.shards.drain(..)) {
        match check(&s) {
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
                names.push(errors_beside(&s.part));
            }
            names
        })
        .chain([own.clone()])
        .collect();
    let garbage: Vec<String> = mine.into_iter().filter(|n| !keep.contains(n)).collect();
    remove_all(dir, &garbage)?;
    manifest.header.worker = worker;
    manifest.shards = kept;
    manifest.rewrite(dir).map_err(io(dir.join(&own)))?;
    Ok(Prepared {
        resume: Resume::from_shards(&manifest.shards),
        redone,
        lock,
    })
}

/// The last record of each shard, in shard order.
fn latest(records: impl IntoIterator<Item = ShardRecord>) -> BTreeMap<u64, ShardRecord> {
    records.into_iter().map(|s| (s.shard, s)).collect()
}

/// How a job's input divides: rows, batches, shards.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Layout {
    /// Input rows (non-blank lines).
    pub rows: u64,
    /// Rows per batch.
    pub batch_size: u64,
    /// Batches per shard.
    pub shard_batches: u64,
}

impl Layout {
    /// `rows` input rows in batches of `batch_size`, `shard_batches` to a
    /// shard.
    pub fn new(rows: u64, batch_size: u64, shard_batches: u64) -> Self {
        Layout {
            rows,
            batch_size,
            shard_batches,
        }
    }

    /// Batches in all.
    pub fn batches(&self) -> u64 {
        self.rows.div_ceil(self.batch_size)
    }

    /// Shards in all (with order preserved).
    pub fn shards(&self) -> u64 {
        self.batches().div_ceil(self.shard_batches)
    }

    /// Input rows in `worker`'s shards.
    pub fn rows_of(&self, worker: Worker) -> u64 {
        let shard_rows = self.shard_batches * self.batch_size;
        (0..self.shards())
            .filter(|&s| worker.owns(s))
            .map(|s| self.rows.min((s + 1) * shard_rows) - s * shard_rows)
            .sum()
    }
}

/// One worker's manifest, summed up.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerStatus {
    /// The manifest file.
    pub manifest: String,
    /// The worker, as `I/N`.
    pub worker: String,
    /// Shards it committed.
    pub shards: u64,
    /// Shards it owns.
    pub shards_owned: u64,
    /// Input rows of its committed shards.
    pub rows: u64,
    /// Bad rows among them.
    pub errors: u64,
    /// Why its manifest does not fit the job now, if it does not.
    pub stale: Option<String>,
}

/// Where a job's output stands.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The output directory.
    pub dir: PathBuf,
    /// The job's layout.
    pub layout: Layout,
    /// Workers in the split (1: one process).
    pub workers: u64,
    /// Shards committed, over all workers.
    pub shards_committed: u64,
    /// Input rows committed.
    pub rows_committed: u64,
    /// Bad rows committed.
    pub errors: u64,
    /// Each manifest found.
    pub per_worker: Vec<WorkerStatus>,
    /// Shards not committed (with order preserved).
    pub missing_shards: Vec<u64>,
    /// Batches not committed.
    pub missing_batches: u64,
    /// Whether `_SUCCESS` is there.
    pub merged: bool,
    #[serde(skip)]
    records: BTreeMap<u64, ShardRecord>,
}

impl Status {
    /// Whether every batch is committed by a manifest that fits the job.
    pub fn complete(&self) -> bool {
        self.missing_batches == 0 && self.per_worker.iter().all(|w| w.stale.is_none())
    }

    /// The missing shards as ranges, each with its worker.
    pub fn missing_described(&self) -> String {
        let split = Worker {
            index: 0,
            count: self.workers.max(1),
        };
        let mut by_worker: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for &s in &self.missing_shards {
            by_worker.entry(split.owner(s).index).or_default().push(s);
        }
        by_worker
            .into_iter()
            .map(|(w, shards)| {
                let who = if split.is_alone() {
                    String::new()
                } else {
                    format!(" (worker {w}/{})", split.count)
                };
                format!("{}{who}", ranges(&shards))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// `1-3, 7, 9-10`.
fn ranges(sorted: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            sorted[i].to_string()
        } else {
            format!("{}-{}", sorted[i], sorted[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.layout;
        writeln!(
            f,
            "{}: {} of {} shards committed ({} of {} rows, {} bad), {} worker(s){}",
            self.dir.display(),
            self.shards_committed,
            l.shards(),
            self.rows_committed,
            l.rows,
            self.errors,
            self.workers,
            if self.merged { ", merged" } else { "" }
        )?;
        for w in &self.per_worker {
            write!(
                f,
                "  worker {:<9} {:>5} of {:<5} shards {:>12} rows {:>8} bad  {}",
                w.worker, w.shards, w.shards_owned, w.rows, w.errors, w.manifest
            )?;
            if let Some(why) = &w.stale {
                write!(f, "  STALE: {why}")?;
            }
            writeln!(f)?;
        }
        if self.missing_batches > 0 {
            if self.missing_shards.is_empty() {
                writeln!(f, "  missing: {} batches", self.missing_batches)?;
            } else {
                writeln!(f, "  missing shards: {}", self.missing_described())?;
            }
        }
        Ok(())
    }
}

/// Reads every manifest in `dir` and sums up where the job stands against
/// `header` (the job now) and `layout`.
pub fn status(
    dir: &Path,
    header: &ManifestHeader,
    layout: Layout,
) -> Result<Status, CheckpointError> {
    let all = Manifest::read_all(dir).map_err(|e| CheckpointError::Resume {
        dir: dir.to_path_buf(),
        why: e.to_string(),
    })?;
    let workers = all
        .iter()
        .map(|(_, m)| m.header.worker.count)
        .max()
        .unwrap_or(1);
    let mut records: BTreeMap<u64, ShardRecord> = BTreeMap::new();
    let mut per_worker = Vec::new();
    for (name, m) in all {
        let w = m.header.worker;
        let mut stale = m.header.refuse(header);
        if w.count != workers {
            stale = Some(format!(
                "a split into {} worker(s), others are into {workers}",
                w.count
            ));
        }
        let shards = latest(m.shards);
        per_worker.push(WorkerStatus {
            manifest: name,
            worker: w.to_string(),
            shards: shards.len() as u64,
            shards_owned: (0..layout.shards()).filter(|&s| w.owns(s)).count() as u64,
            rows: shards.values().map(|s| s.rows).sum(),
            errors: shards.values().map(|s| s.errors).sum(),
            stale: stale.clone(),
        });
        if stale.is_none() {
            records.extend(shards);
        }
    }
    let covered: BTreeSet<u64> = records.values().flat_map(|s| s.batch_indices()).collect();
    let missing: Vec<u64> = (0..layout.batches())
        .filter(|b| !covered.contains(b))
        .collect();
    let ordered = header.config.get("output.preserve_order") != Some(&false.into());
    let missing_shards: Vec<u64> = if ordered {
        missing
            .iter()
            .map(|b| b / layout.shard_batches)
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect()
    } else {
        Vec::new()
    };
    Ok(Status {
        dir: dir.to_path_buf(),
        layout,
        workers,
        shards_committed: records.len() as u64,
        rows_committed: records.values().map(|s| s.rows).sum(),
        errors: records.values().map(|s| s.errors).sum(),
        per_worker,
        missing_shards,
        missing_batches: missing.len() as u64,
        merged: dir.join(SUCCESS).exists(),
        records,
    })
}

fn list(dir: &Path) -> Result<Vec<String>, CheckpointError> {
    let io = |source| CheckpointError::Io {
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

fn remove_all(dir: &Path, names: &[String]) -> Result<(), CheckpointError> {
    for n in names {
        let p = dir.join(n);
        std::fs::remove_file(&p).map_err(|source| CheckpointError::Io { path: p, source })?;
    }
    sync_dir(dir).map_err(|source| CheckpointError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Totals over every committed shard.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    /// Input rows.
    pub rows: u64,
    /// Bad rows.
    pub errors: u64,
    /// Shards.
    pub shards: u64,
    /// The part files, in order.
    pub parts: Vec<String>,
}

impl Totals {
    fn of<'a>(shards: impl IntoIterator<Item = &'a ShardRecord>) -> Self {
        let mut t = Totals::default();
        for s in shards {
            t.rows += s.rows;
            t.errors += s.errors;
            t.shards += 1;
            t.parts.push(s.part.clone());
        }
        t
    }
}

/// Totals over `worker`'s committed shards.
pub fn worker_totals(dir: &Path, worker: Worker) -> Result<Totals, CheckpointError> {
    let m = Manifest::read(dir, &worker.manifest_name())
        .map_err(|e| CheckpointError::Resume {
            dir: dir.to_path_buf(),
            why: e.to_string(),
        })?
        .ok_or_else(|| CheckpointError::Resume {
            dir: dir.to_path_buf(),
            why: format!("{} disappeared", worker.manifest_name()),
        })?;
    Ok(Totals::of(latest(m.shards).values()))
}

/// Once every batch is committed (by one worker or many): verifies every
/// part, assembles `_errors.jsonl` (and `assemble`, if set) from the shards
/// in order, then writes `_SUCCESS`. Refused, naming what is missing or
/// stale, otherwise.
pub fn merge(
    dir: &Path,
    header: &ManifestHeader,
    layout: Layout,
    assemble: Option<&Path>,
) -> Result<Totals, CheckpointError> {
    merge_in(&Place::Local(dir), header, layout, assemble)
}

/// [`status`] of an output prefix in object storage (its manifests copied
/// to the staging directory first).
pub fn status_staged(
    staged: &Staged,
    header: &ManifestHeader,
    layout: Layout,
) -> Result<Status, CheckpointError> {
    let shown = |e: CheckpointError| e.shown_as(&staged.staging, &staged.shown());
    staged.pull().map_err(shown)?;
    let mut s = status(&staged.staging, header, layout).map_err(shown)?;
    s.dir = staged.shown();
    Ok(s)
}

/// [`merge`] of an output prefix in object storage: parts verified and
/// read from the bucket, `_errors.jsonl` and `_SUCCESS` uploaded.
pub fn merge_staged(
    staged: &Staged,
    header: &ManifestHeader,
    layout: Layout,
    assemble: Option<&Path>,
) -> Result<Totals, CheckpointError> {
    let shown = |e: CheckpointError| e.shown_as(&staged.staging, &staged.shown());
    staged.pull().map_err(shown)?;
    merge_in(&Place::Staged(staged), header, layout, assemble).map_err(shown)
}

/// Where a merge reads the shards and writes its files.
enum Place<'a> {
    Local(&'a Path),
    Staged(&'a Staged),
}

impl Place<'_> {
    fn dir(&self) -> &Path {
        match self {
            Place::Local(d) => d,
            Place::Staged(s) => &s.staging,
        }
    }

    fn verify(&self, s: &ShardRecord) -> Result<(), String> {
        super::verify_with(s, &|n| self.open(n))
    }

    fn open(&self, name: &str) -> std::io::Result<Box<dyn std::io::Read + Send>> {
        match self {
            Place::Local(d) => Ok(Box::new(File::open(d.join(name))?)),
            Place::Staged(s) => s.open(name),
        }
    }

    /// Makes the file `name` written in `dir()` the place's: nothing more
    /// in a directory; uploaded (replacing the object) for a prefix.
    fn publish(&self, name: &str) -> Result<(), CheckpointError> {
        match self {
            Place::Local(_) => Ok(()),
            Place::Staged(s) => s.upload(name, false),
        }
    }

    /// Writes `name` in the place from `data` (replacing it).
    fn put(&self, name: &str, data: &[u8]) -> Result<(), CheckpointError> {
        let d = self.dir();
        write_atomic(d, name, data).map_err(|source| CheckpointError::Io {
            path: d.join(name),
            source,
        })?;
        self.publish(name)
    }

    fn remove(&self, name: &str) -> Result<(), CheckpointError> {
        let p = self.dir().join(name);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(CheckpointError::Io { path: p, source: e })
            }
            _ => {}
        }
        match self {
            Place::Local(_) => Ok(()),
            Place::Staged(s) => s.delete(name),
        }
    }

    /// Writes the concatenation of `names` to `target` (a local path or an
    /// object-storage URL), whole or not at all.
    fn concat(&self, names: &[String], target: &Path) -> Result<(), CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: target.to_path_buf(),
            source,
        };
        let remote = crate::remote::is_url(target);
        // An object is written to a local file first, then uploaded.
        let local = if remote {
            self.dir().join(".assembled.tmp")
        } else {
            target.to_path_buf()
        };
        concat(&|n| self.open(n), names, &local).map_err(io)?;
        if remote {
            let r = crate::remote::Location::parse(target).and_then(|l| l.upload(&local, false));
            let _ = std::fs::remove_file(&local);
            r.map_err(io)?;
        }
        Ok(())
    }
}

fn merge_in(
    place: &Place<'_>,
    header: &ManifestHeader,
    layout: Layout,
    assemble: Option<&Path>,
) -> Result<Totals, CheckpointError> {
    let dir = place.dir();
    let status = status(dir, header, layout)?;
    let incomplete = |why: String| CheckpointError::Incomplete {
        dir: dir.to_path_buf(),
        why,
    };
    if let Some(w) = status.per_worker.iter().find(|w| w.stale.is_some()) {
        return Err(incomplete(format!(
            "{} does not fit this job: {}",
            w.manifest,
            w.stale.as_deref().unwrap_or_default()
        )));
    }
    if status.missing_batches > 0 {
        return Err(incomplete(if status.missing_shards.is_empty() {
            format!("{} batches are not committed", status.missing_batches)
        } else {
            format!(
                "{} of {} shards are not committed: {}; run those workers (again), then merge",
                status.missing_shards.len(),
                layout.shards(),
                status.missing_described()
            )
        }));
    }
    let shards: Vec<&ShardRecord> = status.records.values().collect();
    for s in &shards {
        place.verify(s).map_err(incomplete)?;
    }
    let errors: Vec<String> = shards
        .iter()
        .filter(|s| s.errors_bytes > 0)
        .map(|s| errors_beside(&s.part))
        .collect();
    if errors.is_empty() {
        place.remove(ERRORS)?;
    } else {
        place.concat(&errors, &dir.join(ERRORS))?;
        place.publish(ERRORS)?;
    }
    let totals = Totals::of(shards.iter().copied());
    if let Some(target) = assemble {
        place.concat(&totals.parts, target)?;
    }
    place.put(SUCCESS, b"")?;
    Ok(totals)
}

/// Writes the concatenation of what `open` reads for `names` to `target`,
/// atomically.
fn concat(
    open: &dyn Fn(&str) -> std::io::Result<Box<dyn std::io::Read + Send>>,
    names: &[String],
    target: &Path,
) -> std::io::Result<()> {
    // Like the output directory, the assembled file's directory is made
    // when it is not there yet (nothing is removed or replaced).
    std::fs::create_dir_all(super::parent_of(target))?;
    let mut out = AtomicFile::create_at(target)?;
    for n in names {
        std::io::copy(&mut open(n)?, &mut out)?;
    }
    out.commit().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(batch_size: u64) -> ManifestHeader {
        let mut cfg = BTreeMap::new();
        cfg.insert("batch.size".to_string(), serde_json::json!(batch_size));
        let input = super::super::InputFingerprint {
            size: 10,
            mtime_ns: 1,
            head_crc32: 2,
            tail_crc32: 3,
        };
        ManifestHeader::new(input, cfg, Worker::ALONE)
    }

    #[test]
    fn a_directory_is_prepared_resumed_and_refused_with_the_reason_not_a_config_key() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let prepared = prepare(&out, &header(8), false, true).unwrap();
        assert!(prepared.resume.done_shards.is_empty());
        drop(prepared.lock);
        // Prepared again: a resume of nothing committed.
        drop(prepare(&out, &header(8), false, true).unwrap().lock);
        let said = |e: CheckpointError| {
            let s = e.to_string();
            // How to change the outcome (a key, a flag) is the caller's to say.
            assert!(!s.contains("--fresh") && !s.contains("checkpoint."), "{s}");
            s
        };
        let e = said(prepare(&out, &header(8), false, false).err().unwrap());
        assert!(
            e.ends_with("cannot resume: it holds _manifest.jsonl and resuming is off"),
            "{e}"
        );
        let e = said(prepare(&out, &header(16), false, true).err().unwrap());
        assert!(
            e.contains("cannot resume: ") && e.contains("batch.size"),
            "{e}"
        );
        drop(prepare(&out, &header(16), true, true).unwrap().lock);
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        let e = said(prepare(&out, &header(16), true, true).err().unwrap());
        assert!(
            e.ends_with("the output directory is not empty (it holds notes.txt)"),
            "{e}"
        );
        assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"mine");
    }

    #[test]
    fn ours_are_recognised() {
        for n in [
            "part-00001.jsonl",
            "_errors-00002.jsonl",
            ".part-00003.jsonl.tmp",
            "_SUCCESS",
            "_manifest.jsonl",
            "_manifest-00001-of-00004.jsonl",
            "._manifest.jsonl.lock",
            "_report-00001-of-00004.json",
        ] {
            assert!(is_ours(n), "{n}");
        }
        for n in [
            "notes.txt",
            ".bashrc",
            "results.parquet",
            "part-00000-1b2c.snappy.parquet",
            "part-notes.txt",
            "_report_2025.pdf",
            ".notes.tmp",
            "._report_2025.pdf.tmp",
            ".x.lock",
        ] {
            assert!(!is_ours(n), "{n}");
        }
    }

    #[test]
    fn workers_own_only_their_shards_files() {
        let w = Worker::new(1, 4).unwrap();
        for n in [
            "part-00001.jsonl",
            ".part-00005.jsonl.tmp",
            "_errors-00009.jsonl",
            "_manifest-00001-of-00004.jsonl",
            "_report-00001-of-00004.json",
        ] {
            assert!(is_workers(w, n), "{n}");
        }
        for n in [
            "part-00002.jsonl",
            "_manifest-00002-of-00004.jsonl",
            "_errors.jsonl",
            "_report.json",
        ] {
            assert!(!is_workers(w, n), "{n}");
        }
    }

    #[test]
    fn layouts_count_rows_per_worker() {
        let l = Layout {
            rows: 1000,
            batch_size: 64,
            shard_batches: 2,
        };
        assert_eq!(l.batches(), 16);
        assert_eq!(l.shards(), 8);
        let w = |i| Worker::new(i, 3).unwrap();
        assert_eq!(l.rows_of(w(0)) + l.rows_of(w(1)) + l.rows_of(w(2)), 1000);
        // Worker 1 of 3 owns shards 1, 4 (whole) and 7 (the last, partial).
        assert_eq!(l.rows_of(w(1)), 2 * 128 + (1000 - 7 * 128));
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), "1-3, 7, 9-10");
    }
}
