//! How stook writes a file: never through a link, under a temporary name
//! until it is whole and synced, then renamed into place and its directory
//! synced. [`AtomicFile`] is the one implementation: part files, bad-row
//! files, manifests' header and rewrite, `_errors.jsonl`, the assembled
//! output and `_SUCCESS` all go through it.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::ShardRecord;

/// A file being written as `.NAME.tmp` beside its final name, counting its
/// bytes and their CRC-32. [`AtomicFile::commit`] makes it durable under
/// its name; dropped before that (a failed write, a failed commit, a
/// stopped run) it removes its temporary file, so a full disk or a stop
/// leaves nothing behind.
pub struct AtomicFile {
    tmp: PathBuf,
    target: PathBuf,
    out: Option<BufWriter<File>>,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl AtomicFile {
    /// Starts `dir/name`, written as `dir/.name.tmp`.
    pub fn create(dir: &Path, name: &str) -> std::io::Result<Self> {
        Self::create_at(&dir.join(name))
    }

    /// Starts `target`, written as `.NAME.tmp` in its directory.
    pub fn create_at(target: &Path) -> std::io::Result<Self> {
        let name = target
            .file_name()
            .ok_or_else(|| std::io::Error::other(format!("{}: not a file name", target.display())))?
            .to_string_lossy();
        let tmp = target.with_file_name(format!(".{name}.tmp"));
        let file = create_no_follow(&tmp)?;
        Ok(AtomicFile {
            tmp,
            target: target.to_path_buf(),
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        })
    }

    fn out(&mut self) -> std::io::Result<&mut BufWriter<File>> {
        self.out
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the file was already committed"))
    }

    /// Flushes and syncs the file, renames it to its name and syncs the
    /// directory; returns (bytes, crc32). On failure the temporary file is
    /// removed and the error names it.
    pub fn commit(mut self) -> std::io::Result<(u64, u32)> {
        let named = |e: std::io::Error, path: &Path| {
            std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
        };
        let file = self
            .out
            .take()
            .ok_or_else(|| std::io::Error::other("the file was already committed"))?
            .into_inner()
            .map_err(|e| named(e.into_error(), &self.tmp))?;
        file.sync_all().map_err(|e| named(e, &self.tmp))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.target).map_err(|e| named(e, &self.target))?;
        // Renamed: nothing left to remove.
        self.tmp = PathBuf::new();
        sync_dir(parent_of(&self.target)).map_err(|e| named(e, &self.target))?;
        Ok((self.bytes, self.crc.clone().finalize()))
    }

    /// Removes the temporary file (as dropping it does).
    pub fn discard(self) {
        drop(self)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        drop(self.out.take());
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Write for AtomicFile {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.out()?.write(data)?;
        self.crc.update(&data[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out()?.flush()
    }
}

/// A path's directory; `.` for a bare file name (whose parent is "", which
/// cannot be opened to sync).
pub(crate) fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Writes `dir/name` atomically ([`AtomicFile`]).
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut f = AtomicFile::create(dir, name)?;
    f.write_all(data)?;
    f.commit().map(drop)
}

/// Appends one shard record to the manifest and syncs it.
pub fn append_record(file: &mut File, record: &ShardRecord) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    // One write of one whole line, then a sync: a crash leaves at most a
    // torn last line, which a reader drops.
    file.write_all(&line)?;
    file.sync_data()
}

/// Opens the manifest `dir/name` for appending.
pub fn open_for_append(dir: &Path, name: &str) -> std::io::Result<File> {
    OpenOptions::new().append(true).open(dir.join(name))
}

/// Creates (or empties) `path` to write it, never through a symlink
/// there (`O_NOFOLLOW`): a name stook writes is never a way to a file
/// elsewhere. A symlink is an error naming the path.
fn create_no_follow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::other(format!(
                    "{} is a symlink; stook writes only files of its own",
                    path.display()
                ))
            } else {
                std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
            }
        })
}

/// Syncs a directory, making renames in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
