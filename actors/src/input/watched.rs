//! A memory-mapped input that notices when its file changes under it.
//!
//! A mapped file that another process truncates makes every later read of
//! the lost pages raise SIGBUS, which kills the process with no message and
//! leaves its temporary files behind. Here a SIGBUS handler that knows the
//! inputs' mappings puts a page of zeros where the fault was and marks the
//! mapping; the reader carries on to the end of the batch it is reading and
//! then asks [`WatchedMap::check`], which also compares the file's size and
//! modification time with those it had when mapped. A changed input is an
//! ordinary input error: the batch that saw it is not used, the run stops
//! through its usual clean-up (no `.tmp` is left), and what was committed
//! before stays committed.
//!
//! A fault at an address that is no input's goes to the handler that was
//! there before (Rust's stack-overflow report), or to the default action.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use memmap2::Mmap;

use crate::error::PipelineError;

/// Mappings watched at once; a mapping beyond these is read unwatched.
const SLOTS: usize = 64;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    faulted: AtomicBool,
    taken: AtomicBool,
}

static WATCHED: [Slot; SLOTS] = [const {
    Slot {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        faulted: AtomicBool::new(false),
        taken: AtomicBool::new(false),
    }
}; SLOTS];
static PAGE: AtomicUsize = AtomicUsize::new(4096);
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// A read-only map of a file, with what the file was when mapped.
pub struct WatchedMap {
    // Declared first: unregistered (by `Drop`) before the map is unmapped.
    slot: Option<usize>,
    map: Mmap,
    file: File,
    len: u64,
    modified: Option<SystemTime>,
}

impl WatchedMap {
    /// Maps `file` (which must not be empty) and starts watching it.
    pub fn new(file: File) -> std::io::Result<Self> {
        let meta = file.metadata()?;
        // SAFETY: the map is read-only; a change of the file under it is
        // caught by the SIGBUS handler and `check` (module docs).
        let map = unsafe { Mmap::map(&file) }?;
        install();
        let slot = (0..SLOTS).find(|&i| {
            WATCHED[i]
                .taken
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        if let Some(i) = slot {
            let s = &WATCHED[i];
            s.faulted.store(false, Ordering::Release);
            s.len.store(map.len(), Ordering::Release);
            s.start.store(map.as_ptr() as usize, Ordering::Release);
        }
        Ok(WatchedMap {
            slot,
            map,
            file,
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    /// The mapping.
    pub fn map(&self) -> &Mmap {
        &self.map
    }

    /// Whether the file is as it was when mapped: no read of the mapping
    /// has faulted, and its size and modification time are unchanged.
    /// Call it after reading, before using what was read.
    pub fn check(&self, path: &Path) -> Result<(), PipelineError> {
        let faulted = self
            .slot
            .is_some_and(|i| WATCHED[i].faulted.load(Ordering::Acquire));
        let meta = self.file.metadata().ok();
        let len = meta.as_ref().map(|m| m.len());
        let modified = meta.and_then(|m| m.modified().ok());
        if !faulted && len == Some(self.len) && modified == self.modified {
            return Ok(());
        }
        let now = match len {
            Some(n) if n != self.len => {
                format!("{n} bytes now, {} when the run opened it", self.len)
            }
            _ => "rewritten".into(),
        };
        Err(PipelineError::Input {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "the file changed while stook was reading it ({now}); an input must stay as it \
                 is for the whole run. Nothing read after the change was used and what was \
                 committed before it stays committed: a rerun over the file as it was (its \
                 bytes and modification time, as `cp -p` keeps them) resumes"
            )),
        })
    }
}

impl Drop for WatchedMap {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let s = &WATCHED[i];
            s.start.store(0, Ordering::Release);
            s.len.store(0, Ordering::Release);
            s.taken.store(false, Ordering::Release);
        }
    }
}

/// Installs the SIGBUS handler once, keeping the one it replaces.
fn install() {
    PREVIOUS.get_or_init(|| {
        // SAFETY: plain libc calls on zeroed structs of their own types.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE.store(page as usize, Ordering::Release);
            }
            let mut previous: libc::sigaction = std::mem::zeroed();
            let mut ours: libc::sigaction = std::mem::zeroed();
            ours.sa_sigaction = on_sigbus as *const () as usize;
            ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut ours.sa_mask);
            if libc::sigaction(libc::SIGBUS, &ours, &mut previous) != 0 {
                previous.sa_sigaction = libc::SIG_DFL;
            }
            previous
        }
    });
}

/// The SIGBUS handler: only atomics and the `mmap`/`sigaction` system calls.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE.load(Ordering::Acquire);
    for s in &WATCHED {
        let (start, len) = (
            s.start.load(Ordering::Acquire),
            s.len.load(Ordering::Acquire),
        );
        if start != 0 && addr >= start && addr < start + len {
            // SAFETY: the page lies inside a read-only mapping of ours;
            // replacing it with zeros lets the faulting read finish.
            let p = unsafe {
                libc::mmap(
                    (addr & !(page - 1)) as *mut libc::c_void,
                    page,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                s.faulted.store(true, Ordering::Release);
                return;
            }
        }
    }
    // Not an input's page: what was there before.
    match PREVIOUS.get() {
        Some(prev)
            if prev.sa_flags & libc::SA_SIGINFO != 0
                && prev.sa_sigaction != libc::SIG_DFL
                && prev.sa_sigaction != libc::SIG_IGN =>
        {
            // SAFETY: an SA_SIGINFO handler has this signature.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(prev.sa_sigaction) };
            f(sig, info, ctx)
        }
        Some(prev) if prev.sa_sigaction != libc::SIG_DFL && prev.sa_sigaction != libc::SIG_IGN => {
            // SAFETY: a plain handler has this signature.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(prev.sa_sigaction) };
            f(sig)
        }
        _ => {
            // The default action: returning re-runs the read, which faults
            // again and ends the process as it would have.
            // SAFETY: resetting a signal's disposition.
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_truncated_mapping_reads_zeros_and_fails_its_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![b'x'; 1 << 20]).unwrap();
        drop(f);
        let m = WatchedMap::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(m.map()[5000], b'x');
        m.check(&path).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        // Past the new end: SIGBUS without the handler.
        let tail: u64 = m.map()[500_000..600_000].iter().map(|&b| b as u64).sum();
        assert_eq!(tail, 0);
        let e = m.check(&path).unwrap_err().to_string();
        assert!(
            e.contains("in.jsonl") && e.contains("changed while stook was reading"),
            "{e}"
        );
        assert!(e.contains("4096 bytes now, 1048576 when"), "{e}");
    }

    #[test]
    fn a_second_mapping_is_watched_apart_from_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, vec![b'a'; 1 << 16]).unwrap();
        std::fs::write(&b, vec![b'b'; 1 << 16]).unwrap();
        let ma = WatchedMap::new(File::open(&a).unwrap()).unwrap();
        let mb = WatchedMap::new(File::open(&b).unwrap()).unwrap();
        File::options()
            .write(true)
            .open(&b)
            .unwrap()
            .set_len(0)
            .unwrap();
        assert_eq!(mb.map()[40_000], 0);
        assert_eq!(ma.map()[40_000], b'a');
        ma.check(&a).unwrap();
        assert!(mb.check(&b).is_err());
    }
}
