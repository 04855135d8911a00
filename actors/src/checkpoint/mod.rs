//! Checkpoints: the manifest of committed shards, the fingerprints that make
//! a resume safe, what a resumed run may skip, and how a job is split among
//! workers.
//!
//! A manifest starts with a header line naming the input's and the config's
//! fingerprints; every further line is one committed shard ([`ShardRecord`]),
//! appended and synced only after its part file is durable under its final
//! name. A crash can leave at most a torn last line, which [`Manifest::read`]
//! drops (and [`Manifest::rewrite`] removes).
//!
//! A job may be split among `N` worker processes ([`Worker`]): worker `I`
//! owns the shards whose index ≡ I mod N and writes only its own files: the
//! part and bad-row files of its shards and its own manifest,
//! `_manifest-0000I-of-0000N.jsonl` (a lone worker's is `_manifest.jsonl`).
//! So no file in the output directory ever has two writers, on any
//! filesystem, and no manifest append needs to be atomic across processes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod files;
pub mod protocol;
pub mod remote;

pub(crate) use files::parent_of;
pub use files::{append_record, open_for_append, sync_dir, write_atomic, AtomicFile};

/// A lone worker's manifest in the output directory.
pub const MANIFEST: &str = "_manifest.jsonl";
/// The stem every manifest's name starts with.
pub const MANIFEST_STEM: &str = "_manifest";
/// The assembled errors file (all shards' bad rows, in shard order).
pub const ERRORS: &str = "_errors.jsonl";
/// The success marker.
pub const SUCCESS: &str = "_SUCCESS";

/// Digits in the shard numbers of a job of `shards` shards: 5, or as many
/// as the last shard needs, so that names sort as their numbers do
/// (`part-099999` before `part-100000`) and `cat part-*` stays in order.
pub fn name_width(shards: u64) -> usize {
    shards.saturating_sub(1).to_string().len().max(5)
}

/// The name of shard `i`'s part file, its number `width` digits long (see
/// [`name_width`]), with extension `ext`.
pub fn part_name(i: u64, width: usize, ext: &str) -> String {
    format!("part-{i:0width$}.{ext}")
}

/// The name of shard `i`'s bad-row file (only when it has bad rows).
pub fn errors_name(i: u64, width: usize) -> String {
    format!("_errors-{i:0width$}.jsonl")
}

/// The bad-row file beside the part file `part` (`part-NNNNN.ext` →
/// `_errors-NNNNN.jsonl`, as many digits).
pub fn errors_beside(part: &str) -> String {
    let digits = part
        .strip_prefix("part-")
        .and_then(|r| r.split('.').next())
        .unwrap_or_default();
    format!("_errors-{digits}.jsonl")
}

/// The shard of a file stook names after one: `part-NNNNN.jsonl`
/// (`.parquet`, `.arrow`), `_errors-NNNNN.jsonl`, or one of those being
/// written (`.part-NNNNN.jsonl.tmp`); `None` for any other name, however
/// alike (`part-00000-….snappy.parquet`, `part-notes.txt`).
pub fn shard_of(name: &str) -> Option<u64> {
    let inner = name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(".tmp"))
        .unwrap_or(name);
    let digits = match inner.strip_prefix("part-") {
        Some(rest) => {
            let (digits, ext) = rest.split_once('.')?;
            ["jsonl", "parquet", "arrow"]
                .contains(&ext)
                .then_some(digits)?
        }
        None => inner.strip_prefix("_errors-")?.strip_suffix(".jsonl")?,
    };
    (digits.len() >= 5 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Whether `name` is `{stem}.{ext}` or a worker's `{stem}-NNNNN-of-NNNNN.{ext}`.
pub fn is_worker_file(name: &str, stem: &str, ext: &str) -> bool {
    let Some(rest) = name.strip_prefix(stem).and_then(|r| r.strip_suffix(ext)) else {
        return false;
    };
    let Some(rest) = rest.strip_suffix('.') else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let digits = |d: &str| d.len() >= 5 && d.bytes().all(|b| b.is_ascii_digit());
    rest.strip_prefix('-')
        .and_then(|r| r.split_once("-of-"))
        .is_some_and(|(i, n)| digits(i) && digits(n))
}

/// One worker's slice of a job: the shards whose index ≡ `index` mod
/// `count`. Round-robin rather than contiguous ranges: a worker needs no row
/// count to know its shards, and rows that cost more in one region of the
/// input (longer texts at the end, say) are spread over every worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    /// This worker, from 0.
    pub index: u64,
    /// Workers in all.
    pub count: u64,
}

impl Default for Worker {
    fn default() -> Self {
        Worker::ALONE
    }
}

impl std::fmt::Display for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Worker {
    /// The only worker of a job.
    pub const ALONE: Worker = Worker { index: 0, count: 1 };

    /// Worker `index` of `count`.
    pub fn new(index: u64, count: u64) -> Result<Self, String> {
        if count == 0 {
            return Err("the worker count must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "worker index {index} is out of range for {count} workers (0 to {})",
                count - 1
            ));
        }
        Ok(Worker { index, count })
    }

    /// Whether this is the job's only worker.
    pub fn is_alone(&self) -> bool {
        self.count == 1
    }

    /// Whether shard `shard` is this worker's.
    pub fn owns(&self, shard: u64) -> bool {
        shard % self.count == self.index
    }

    /// The worker that owns `shard` in a split like this one.
    pub fn owner(&self, shard: u64) -> Worker {
        Worker {
            index: shard % self.count,
            count: self.count,
        }
    }

    /// Its manifest's name.
    pub fn manifest_name(&self) -> String {
        self.file_name(MANIFEST_STEM, "jsonl")
    }

    /// `{stem}.{ext}` alone, `{stem}-0000I-of-0000N.{ext}` in a split.
    pub fn file_name(&self, stem: &str, ext: &str) -> String {
        if self.is_alone() {
            format!("{stem}.{ext}")
        } else {
            format!("{stem}-{:05}-of-{:05}.{ext}", self.index, self.count)
        }
    }
}

/// What identifies an input file: size, mtime and CRC-32s of its first and
/// last 64 KiB.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFingerprint {
    /// Bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: u128,
    /// CRC-32 of the first 64 KiB.
    pub head_crc32: u32,
    /// CRC-32 of the last 64 KiB.
    pub tail_crc32: u32,
}

const BLOCK: u64 = 64 << 10;

impl InputFingerprint {
    /// Fingerprints `path`; a directory (of Parquet files) by its files
    /// in name order: sizes summed, the latest mtime, CRCs chained.
    /// An object in a bucket by its size, modification time and the same
    /// CRCs (two ranged GETs): a copy of a local file has its content key.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        if crate::remote::is_dir(path) {
            let mut names: Vec<PathBuf> = if crate::remote::is_url(path) {
                crate::remote::files_under(path, |_| true)?
            } else {
                std::fs::read_dir(path)?
                    .map(|e| e.map(|e| e.path()))
                    .collect::<Result<_, _>>()?
            };
            names.retain(|p| {
                (crate::remote::is_url(p) || p.is_file())
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(['.', '_']))
            });
            names.sort();
            let (mut head, mut tail) = (crc32fast::Hasher::new(), crc32fast::Hasher::new());
            let mut all = InputFingerprint {
                size: 0,
                mtime_ns: 0,
                head_crc32: 0,
                tail_crc32: 0,
            };
            for n in names {
                let f = InputFingerprint::of(&n)?;
                all.size += f.size;
                all.mtime_ns = all.mtime_ns.max(f.mtime_ns);
                head.update(&f.head_crc32.to_le_bytes());
                tail.update(&f.tail_crc32.to_le_bytes());
                tail.update(&f.size.to_le_bytes());
            }
            all.head_crc32 = head.finalize();
            all.tail_crc32 = tail.finalize();
            return Ok(all);
        }
        if crate::remote::is_url(path) {
            let loc = crate::remote::Location::parse(path)?;
            let meta = loc.head()?;
            let size = meta.size;
            let crc_at = |at: u64| -> std::io::Result<u32> {
                if size == 0 {
                    return Ok(crc32fast::hash(&[]));
                }
                Ok(crc32fast::hash(&loc.get_range(at..(at + BLOCK).min(size))?))
            };
            return Ok(InputFingerprint {
                size,
                mtime_ns: meta.last_modified.timestamp_nanos_opt().unwrap_or(0).max(0) as u128,
                head_crc32: crc_at(0)?,
                tail_crc32: crc_at(size.saturating_sub(BLOCK))?,
            });
        }
        let mut f = File::open(path)?;
        let meta = f.metadata()?;
        let size = meta.len();
        let mtime_ns = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut crc_at = |at: u64| -> std::io::Result<u32> {
            f.seek(SeekFrom::Start(at))?;
            let mut buf = Vec::with_capacity(BLOCK as usize);
            (&mut f).take(BLOCK).read_to_end(&mut buf)?;
            Ok(crc32fast::hash(&buf))
        };
        let head_crc32 = crc_at(0)?;
        let tail_crc32 = crc_at(size.saturating_sub(BLOCK))?;
        Ok(InputFingerprint {
            size,
            mtime_ns,
            head_crc32,
            tail_crc32,
        })
    }

    /// The content part alone (size and CRCs, not the modification time),
    /// as hex: the same for a copy of the file.
    pub fn content_key(&self) -> String {
        format!(
            "{:016x}{:08x}{:08x}",
            self.size, self.head_crc32, self.tail_crc32
        )
    }

    /// What differs from `other`, in words.
    pub fn differences(&self, other: &Self) -> Vec<String> {
        let mut d = Vec::new();
        if self.size != other.size {
            d.push(format!("size {} → {} bytes", self.size, other.size));
        }
        if self.mtime_ns != other.mtime_ns {
            d.push("modification time".into());
        }
        if self.head_crc32 != other.head_crc32 {
            d.push("content of its first 64 KiB".into());
        }
        if self.tail_crc32 != other.tail_crc32 {
            d.push("content of its last 64 KiB".into());
        }
        d
    }
}

/// The first line of a manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestHeader {
    /// Always "stook".
    pub manifest: String,
    /// Format version.
    pub version: u32,
    /// The input the shards were computed from.
    pub input: InputFingerprint,
    /// The settings that change results, by config key.
    pub config: BTreeMap<String, serde_json::Value>,
    /// The worker that writes this manifest (absent: a lone worker).
    #[serde(default, skip_serializing_if = "Worker::is_alone")]
    pub worker: Worker,
}

impl ManifestHeader {
    /// A header for a new output.
    pub fn new(
        input: InputFingerprint,
        config: BTreeMap<String, serde_json::Value>,
        worker: Worker,
    ) -> Self {
        ManifestHeader {
            manifest: "stook".into(),
            version: 1,
            input,
            config,
            worker,
        }
    }

    /// Why a run with `now` may not resume this output, if it may not.
    pub fn refuse(&self, now: &ManifestHeader) -> Option<String> {
        let mut why = Vec::new();
        let input = self.input.differences(&now.input);
        if !input.is_empty() {
            why.push(format!("the input changed ({})", input.join(", ")));
        }
        let keys: BTreeSet<&String> = self.config.keys().chain(now.config.keys()).collect();
        let changed: Vec<String> = keys
            .into_iter()
            .filter(|k| self.config.get(*k) != now.config.get(*k))
            .map(|k| {
                let show = |v: Option<&serde_json::Value>| {
                    v.map_or("(unset)".to_string(), |v| v.to_string())
                };
                format!(
                    "{k}: {} → {}",
                    show(self.config.get(k)),
                    show(now.config.get(k))
                )
            })
            .collect();
        if !changed.is_empty() {
            why.push(format!("the config changed ({})", changed.join("; ")));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// One committed shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Shard index.
    pub shard: u64,
    /// Part file name.
    pub part: String,
    /// Runs of batch indices it holds, as `[first, last]`.
    pub batches: Vec<(u64, u64)>,
    /// Input rows of its batches (results and bad rows).
    pub rows: u64,
    /// Bad rows of its batches.
    pub errors: u64,
    /// The part's size in bytes.
    pub bytes: u64,
    /// CRC-32 of the part's bytes.
    pub crc32: u32,
    /// The size of its bad-row file (0: none).
    pub errors_bytes: u64,
    /// CRC-32 of its bad-row file (absent in manifests written before it
    /// was recorded: their bad-row files are checked by size alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_crc32: Option<u32>,
}

impl ShardRecord {
    /// Every batch index it holds.
    pub fn batch_indices(&self) -> impl Iterator<Item = u64> + '_ {
        self.batches.iter().flat_map(|&(a, b)| a..=b)
    }
}

/// A manifest as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// The header.
    pub header: ManifestHeader,
    /// Committed shards, in commit order.
    pub shards: Vec<ShardRecord>,
    /// Whether a torn last line was dropped.
    pub torn_tail: bool,
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {message}", .path.display())]
pub struct ManifestError {
    /// The manifest.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl Manifest {
    /// Reads the manifest `dir/name`; `Ok(None)` when there is none.
    pub fn read(dir: &Path, name: &str) -> Result<Option<Self>, ManifestError> {
        let path = dir.join(name);
        let err = |line, message: String| ManifestError {
            path: path.clone(),
            line,
            message,
        };
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(0, e.to_string())),
        };
        let complete = text.ends_with(b"\n");
        let lines: Vec<&[u8]> = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let mut header = None;
        let mut shards = Vec::new();
        let mut torn_tail = false;
        for (i, line) in lines.iter().enumerate() {
            let last = i + 1 == lines.len();
            let parsed = if i == 0 {
                serde_json::from_slice::<ManifestHeader>(line).map(|h| header = Some(h))
            } else {
                serde_json::from_slice::<ShardRecord>(line).map(|s| shards.push(s))
            };
            // A part is named by stook for its shard, a bare name in this
            // directory: anything else (`../../secret.txt`) is not trusted.
            if let (Ok(()), Some(s)) = (&parsed, shards.last()) {
                if i > 0 && !(s.part.starts_with("part-") && shard_of(&s.part) == Some(s.shard)) {
                    return Err(err(
                        i + 1,
                        format!(
                            "names the part {:?}, which is not stook's name for shard {}",
                            s.part, s.shard
                        ),
                    ));
                }
            }
            match parsed {
                Ok(()) => {}
                // A crash mid-append leaves an unterminated last line.
                Err(_) if last && !complete => torn_tail = true,
                Err(e) => return Err(err(i + 1, format!("not a manifest line: {e}"))),
            }
        }
        let Some(header) = header else {
            return Err(err(1, "no header line".into()));
        };
        if header.manifest != "stook" || header.version != 1 {
            return Err(err(1, "not a stook manifest of version 1".into()));
        }
        Ok(Some(Manifest {
            header,
            shards,
            torn_tail,
        }))
    }

    /// Every manifest in `dir`, by name, in name order.
    pub fn read_all(dir: &Path) -> Result<Vec<(String, Self)>, ManifestError> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| ManifestError {
                path: dir.to_path_buf(),
                line: 0,
                message: e.to_string(),
            })?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_manifest(n))
            .collect();
        names.sort();
        let mut all = Vec::new();
        for n in names {
            if let Some(m) = Manifest::read(dir, &n)? {
                all.push((n, m));
            }
        }
        Ok(all)
    }

    /// Writes the manifest anew (temporary file, sync, rename, sync dir).
    pub fn rewrite(&self, dir: &Path) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(&self.header).map_err(std::io::Error::other)?;
        text.push(b'\n');
        for s in &self.shards {
            text.extend(serde_json::to_vec(s).map_err(std::io::Error::other)?);
            text.push(b'\n');
        }
        write_atomic(dir, &self.header.worker.manifest_name(), &text)
    }
}

/// Whether `name` is a manifest's.
pub fn is_manifest(name: &str) -> bool {
    is_worker_file(name, MANIFEST_STEM, "jsonl")
}

/// A stream's length and CRC-32, read 1 MiB at a time.
fn crc_of(mut f: impl Read) -> std::io::Result<(u64, u32)> {
    let (mut h, mut len, mut buf) = (crc32fast::Hasher::new(), 0u64, vec![0u8; 1 << 20]);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((len, h.finalize()));
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
}

/// Whether a shard's files are as the manifest says.
pub fn verify(dir: &Path, record: &ShardRecord) -> Result<(), String> {
    verify_with(record, &|name| {
        File::open(dir.join(name)).map(|f| Box::new(f) as Box<dyn Read + Send>)
    })
}

/// Whether a shard's files, as `open` reads them (a directory's, or a
/// bucket's), are as the manifest says.
pub fn verify_with(
    record: &ShardRecord,
    open: &dyn Fn(&str) -> std::io::Result<Box<dyn Read + Send>>,
) -> Result<(), String> {
    // Streamed: a part may be far larger than memory should hold.
    let (len, crc) = open(&record.part)
        .and_then(crc_of)
        .map_err(|e| format!("{}: {e}", record.part))?;
    if len != record.bytes {
        return Err(format!(
            "{}: {len} bytes, the manifest says {}",
            record.part, record.bytes
        ));
    }
    if crc != record.crc32 {
        return Err(format!(
            "{}: checksum differs from the manifest's",
            record.part
        ));
    }
    if record.errors_bytes > 0 {
        let name = errors_beside(&record.part);
        let (len, crc) = open(&name)
            .and_then(crc_of)
            .map_err(|e| format!("{name}: {e}"))?;
        if len != record.errors_bytes {
            return Err(format!(
                "{name}: {len} bytes, the manifest says {}",
                record.errors_bytes
            ));
        }
        if record.errors_crc32.is_some_and(|want| want != crc) {
            return Err(format!("{name}: checksum differs from the manifest's"));
        }
    }
    Ok(())
}

/// The batches a run computes: its worker's, less those already committed.
#[derive(Clone, Debug, Default)]
pub struct Todo {
    /// Batches committed by an earlier run.
    pub done: BTreeSet<u64>,
    /// Whose shards.
    pub worker: Worker,
    /// Batches per shard.
    pub shard_batches: u64,
}

impl Todo {
    /// Whether batch `index` is not this run's to compute.
    pub fn skips(&self, index: u64) -> bool {
        self.done.contains(&index)
            || (!self.worker.is_alone() && !self.worker.owns(index / self.shard_batches.max(1)))
    }
}

/// What a resumed run skips and where it goes on.
#[derive(Clone, Debug, Default)]
pub struct Resume {
    /// Batches already committed.
    pub done_batches: BTreeSet<u64>,
    /// Shard indices already committed.
    pub done_shards: BTreeSet<u64>,
    /// Rows (results and bad rows) already committed.
    pub done_rows: u64,
    /// Bad rows already committed.
    pub done_errors: u64,
}

impl Resume {
    /// From the verified shards of a manifest.
    pub fn from_shards(shards: &[ShardRecord]) -> Self {
        let mut r = Resume::default();
        for s in shards {
            r.done_batches.extend(s.batch_indices());
            r.done_shards.insert(s.shard);
            r.done_rows += s.rows;
            r.done_errors += s.errors;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn header() -> ManifestHeader {
        let mut cfg = BTreeMap::new();
        cfg.insert("batch.size".to_string(), serde_json::json!(256));
        ManifestHeader::new(
            InputFingerprint {
                size: 10,
                mtime_ns: 1,
                head_crc32: 2,
                tail_crc32: 3,
            },
            cfg,
            Worker::ALONE,
        )
    }

    fn record(shard: u64) -> ShardRecord {
        ShardRecord {
            shard,
            part: part_name(shard, 5, "jsonl"),
            batches: vec![(shard * 2, shard * 2 + 1)],
            rows: 10,
            errors: 0,
            bytes: 0,
            crc32: 0,
            errors_bytes: 0,
            errors_crc32: None,
        }
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_torn_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest {
            header: header(),
            shards: vec![record(0), record(1)],
            torn_tail: false,
        };
        m.rewrite(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path(), MANIFEST).unwrap().unwrap(), m);
        let mut f = open_for_append(dir.path(), MANIFEST).unwrap();
        f.write_all(b"{\"shard\":2,\"par").unwrap();
        let back = Manifest::read(dir.path(), MANIFEST).unwrap().unwrap();
        assert!(back.torn_tail);
        assert_eq!(back.shards.len(), 2);
        f.write_all(b"\n").unwrap();
        let e = Manifest::read(dir.path(), MANIFEST)
            .unwrap_err()
            .to_string();
        assert!(e.contains("_manifest.jsonl:4: not a manifest line"), "{e}");
    }

    #[test]
    fn manifest_part_names_are_not_trusted_as_paths() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "../../secret.txt",
            "/etc/passwd",
            "part-00001.jsonl",
            ".part-00000.jsonl.tmp",
        ] {
            let mut r = record(0);
            r.part = bad.into();
            let m = Manifest {
                header: header(),
                shards: vec![record(1), r],
                torn_tail: false,
            };
            m.rewrite(dir.path()).unwrap();
            let e = Manifest::read(dir.path(), MANIFEST)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!(
                    "_manifest.jsonl:3: names the part {bad:?}, which is not stook's name for shard 0"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn part_names_sort_as_their_numbers_past_99999_shards() {
        assert_eq!(name_width(1), 5);
        assert_eq!(name_width(100_000), 5);
        assert_eq!(name_width(100_001), 6);
        assert_eq!(name_width(12_345_678), 8);
        for shards in [3, 100_000, 100_001, 1_000_001] {
            let w = name_width(shards);
            let shards_named: Vec<u64> = [0, 9, 10_000, 99_999, 100_000, shards - 1]
                .into_iter()
                .filter(|&i| i < shards)
                .collect();
            let names: Vec<String> = shards_named
                .iter()
                .map(|&i| part_name(i, w, "jsonl"))
                .collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(sorted, names, "{shards} shards");
            for (n, &i) in names.iter().zip(&shards_named) {
                assert_eq!(shard_of(n), Some(i));
                assert_eq!(errors_beside(n), errors_name(i, w));
            }
        }
        assert_eq!(part_name(7, 5, "jsonl"), "part-00007.jsonl");
        assert_eq!(part_name(100_000, 6, "parquet"), "part-100000.parquet");
    }

    #[test]
    fn bad_row_files_are_checked_by_size_and_crc() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join(part_name(0, 5, "jsonl")), b"").unwrap();
        std::fs::write(d.join(errors_name(0, 5)), b"{\"line\":1}\n").unwrap();
        let (len, crc) = crc_of(File::open(d.join(errors_name(0, 5))).unwrap()).unwrap();
        let mut r = record(0);
        (r.bytes, r.crc32) = crc_of(File::open(d.join(part_name(0, 5, "jsonl"))).unwrap()).unwrap();
        (r.errors_bytes, r.errors_crc32) = (len, Some(crc));
        assert_eq!(verify(d, &r), Ok(()));
        // The same size, other bytes.
        std::fs::write(d.join(errors_name(0, 5)), b"{\"line\":2}\n").unwrap();
        let e = verify(d, &r).unwrap_err();
        assert_eq!(
            e,
            "_errors-00000.jsonl: checksum differs from the manifest's"
        );
        // A manifest from before CRCs were kept: size alone.
        r.errors_crc32 = None;
        assert_eq!(verify(d, &r), Ok(()));
    }

    #[test]
    fn a_header_reads_back_equal_to_the_one_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = header();
        // A float whose shortest form a fast, inexact parser misreads.
        h.config.insert(
            "model.options".into(),
            serde_json::json!({"f": 2.8013114580185006}),
        );
        let m = Manifest {
            header: h.clone(),
            shards: vec![],
            torn_tail: false,
        };
        m.rewrite(dir.path()).unwrap();
        let back = Manifest::read(dir.path(), MANIFEST).unwrap().unwrap();
        assert_eq!(back.header.refuse(&h), None);
    }

    #[test]
    fn refusals_name_what_changed() {
        let a = header();
        let mut b = header();
        assert_eq!(a.refuse(&b), None);
        b.input.size = 11;
        b.config.insert("batch.size".into(), serde_json::json!(64));
        let why = a.refuse(&b).unwrap();
        assert!(
            why.contains("the input changed (size 10 → 11 bytes)"),
            "{why}"
        );
        assert!(why.contains("batch.size: 256 → 64"), "{why}");
    }

    #[test]
    fn fingerprints_see_content_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![b'a'; 200_000]).unwrap();
        let a = InputFingerprint::of(&p).unwrap();
        let mut data = vec![b'a'; 200_000];
        data[199_999] = b'b';
        std::fs::write(&p, data).unwrap();
        let b = InputFingerprint::of(&p).unwrap();
        assert_ne!(a.tail_crc32, b.tail_crc32);
        assert_eq!(a.head_crc32, b.head_crc32);
    }

    #[test]
    fn workers_own_shards_round_robin_and_name_their_files() {
        let w = Worker::new(2, 4).unwrap();
        let owned: Vec<u64> = (0..12).filter(|&s| w.owns(s)).collect();
        assert_eq!(owned, [2, 6, 10]);
        assert_eq!(w.manifest_name(), "_manifest-00002-of-00004.jsonl");
        assert_eq!(Worker::ALONE.manifest_name(), MANIFEST);
        assert!(Worker::new(4, 4).unwrap_err().contains("0 to 3"));
        assert!(Worker::new(0, 0).is_err());
        let todo = Todo {
            done: [8].into(),
            worker: w,
            shard_batches: 4,
        };
        let computed: Vec<u64> = (0..16).filter(|&b| !todo.skips(b)).collect();
        assert_eq!(computed, [9, 10, 11]);
        assert_eq!(shard_of("part-00012.jsonl"), Some(12));
        assert_eq!(shard_of("part-100000.jsonl"), Some(100_000));
        assert_eq!(shard_of(".part-00012.jsonl.tmp"), Some(12));
        assert_eq!(shard_of("_errors-00003.jsonl"), Some(3));
        assert_eq!(shard_of("_errors.jsonl"), None);
        // Only stook's exact names: not a Spark part, not notes.
        for n in [
            "part-00000-1b2c.snappy.parquet",
            "part-00000.snappy.parquet",
            "part-notes.txt",
            "part-0001.jsonl",
            ".part-00001.jsonl.bak",
            "_errors-00001.json",
        ] {
            assert_eq!(shard_of(n), None, "{n}");
        }
        assert!(is_worker_file("_manifest.jsonl", MANIFEST_STEM, "jsonl"));
        assert!(is_worker_file(
            "_manifest-00001-of-00004.jsonl",
            MANIFEST_STEM,
            "jsonl"
        ));
        assert!(!is_worker_file(
            "_manifest_old.jsonl",
            MANIFEST_STEM,
            "jsonl"
        ));
        assert!(!is_worker_file("_manifest-x.jsonl", MANIFEST_STEM, "jsonl"));
        assert!(is_manifest("_manifest-00002-of-00004.jsonl"));
    }
}
