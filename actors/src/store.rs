//! The object store: one shared-memory region that holds every batch of rows
//! in the process, as Arrow IPC messages, with exact accounting.
//!
//! ```text
//!   try_reserve(n) ──▶ Reservation (an extent, counted as reserved)
//!                        │ writer() + finish(len)
//!                        ▼
//!                      ObjectRef (counted as live; clone = +1 ref, drop = -1 ref)
//!                        │ last ref dropped
//!                        ▼
//!                      extent freed, pages returned to the kernel
//! ```
//!
//! The region is a `memfd` mapped with `memmap2`: it has no name in the file
//! system, so nothing can be left behind in `/dev/shm` by any exit, SIGKILL
//! included. The budget is enforced by accounting (live + reserved bytes),
//! never by the size of the mapping: the mapping is twice the budget so that
//! fragmentation cannot refuse a reservation that the budget allows, and freed
//! pages are punched out so that resident memory follows live bytes.
//!
//! The store is not an actor on purpose: a reference count must drop
//! synchronously when an `ObjectRef` is dropped, wherever that happens, and a
//! mailbox cannot offer that. It is a shared value with one lock, taken a few
//! times per batch.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::MmapRaw;

use crate::error::StoreError;
use crate::progress::Progress;

/// Every object starts on a multiple of this, which Arrow's buffers want.
pub const ALIGN: usize = 64;

/// Who pins an object, for the accounting table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(usize)]
pub enum Holder {
    /// Encoded by the Source, not yet dispatched.
    Source,
    /// Dispatched to a backend, being computed on.
    InFlight,
    /// A finished output waiting in the Sink's reorder buffer.
    Reorder,
    /// Being written by the Sink.
    Sink,
}

impl Holder {
    const ALL: [Holder; 4] = [
        Holder::Source,
        Holder::InFlight,
        Holder::Reorder,
        Holder::Sink,
    ];

    fn name(self) -> &'static str {
        match self {
            Holder::Source => "source",
            Holder::InFlight => "in_flight",
            Holder::Reorder => "reorder",
            Holder::Sink => "sink",
        }
    }
}

/// What the store holds at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// The byte budget: live + reserved never exceeds it.
    pub budget: u64,
    /// Bytes held by objects.
    pub live: u64,
    /// Bytes reserved for objects not yet written.
    pub reserved: u64,
    /// The largest live + reserved seen so far.
    pub peak: u64,
    /// Objects held.
    pub objects: u64,
    /// Reservations outstanding.
    pub reservations: u64,
    /// The most objects held at once.
    pub peak_objects: u64,
    /// Objects and bytes per holder now.
    pub holders: BTreeMap<String, HolderStats>,
    /// The most objects and bytes each holder pinned at once.
    pub peak_holders: BTreeMap<String, HolderStats>,
}

/// Objects and bytes one holder pins.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HolderStats {
    /// Objects pinned.
    pub objects: u64,
    /// Bytes pinned.
    pub bytes: u64,
}

/// A shared-memory object store with a byte budget. Cheap to clone.
#[derive(Clone)]
pub struct ObjectStore {
    inner: Arc<Inner>,
}

struct Inner {
    map: MmapRaw,
    gauge: Option<Arc<Progress>>,
    holders: bool,
    // Keeps the memfd open for hole punching; closed when the store goes.
    file: File,
    budget: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Free extents, offset → length, coalesced.
    free: BTreeMap<usize, usize>,
    objects: HashMap<u64, Entry>,
    next_id: u64,
    live: usize,
    reserved: usize,
    reservations: usize,
    peak: usize,
    peak_objects: usize,
    held: [HolderStats; 4],
    peak_held: [HolderStats; 4],
}

struct Entry {
    offset: usize,
    capacity: usize,
    refs: usize,
    holder: Holder,
}

impl ObjectStore {
    /// Creates a store with `budget` bytes, backed by an anonymous memfd.
    pub fn new(budget: usize) -> Result<Self, StoreError> {
        Self::with_options(budget, None, true)
    }

    /// A store that publishes its gauges to `gauge` on every change, and
    /// tracks who holds each object when `holders` is on.
    pub fn with_options(
        budget: usize,
        gauge: Option<Arc<Progress>>,
        holders: bool,
    ) -> Result<Self, StoreError> {
        if budget < ALIGN {
            return Err(StoreError::BudgetTooSmall { budget });
        }
        let budget = budget / ALIGN * ALIGN;
        let region = budget
            .checked_mul(2)
            .ok_or(StoreError::BudgetTooSmall { budget })?;
        let file = memfd("stook-object-store").map_err(StoreError::Create)?;
        file.set_len(region as u64).map_err(StoreError::Create)?;
        let map = MmapRaw::map_raw(&file).map_err(StoreError::Create)?;
        let mut state = State::default();
        state.free.insert(0, region);
        Ok(ObjectStore {
            inner: Arc::new(Inner {
                map,
                gauge,
                holders,
                file,
                budget,
                state: Mutex::new(state),
            }),
        })
    }

    /// The byte budget.
    pub fn budget(&self) -> usize {
        self.inner.budget
    }

    /// Reserves `bytes` (rounded up to the alignment) if live + reserved stays
    /// within the budget. `Ok(None)` means "not now": wait for objects to be
    /// released. A request larger than the whole budget is an error, since no
    /// amount of waiting can satisfy it.
    pub fn try_reserve(&self, bytes: usize) -> Result<Option<Reservation>, StoreError> {
        let size = round_up(bytes.max(1));
        if size > self.inner.budget {
            return Err(StoreError::TooLarge {
                requested: size,
                budget: self.inner.budget,
            });
        }
        let mut st = self.inner.lock();
        if st.live + st.reserved + size > self.inner.budget {
            return Ok(None);
        }
        let Some(offset) = st.take_extent(size) else {
            return Ok(None);
        };
        st.reserved += size;
        st.reservations += 1;
        st.note_peak();
        st.trace("reserve", 0, size);
        self.inner.publish(&st);
        Ok(Some(Reservation {
            store: self.inner.clone(),
            offset,
            size,
        }))
    }

    /// The shared memory itself (the memfd), for a process that reads and
    /// writes objects in place: it maps [`ObjectStore::region_len`] bytes
    /// of it, reads an object at [`ObjectRef::offset`] and writes a
    /// reservation at [`Reservation::offset`]. Owned by the store: valid
    /// while it lives.
    pub fn shared_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.inner.file)
    }

    /// The bytes of the shared region (twice the budget).
    pub fn region_len(&self) -> usize {
        self.inner.map.len()
    }

    /// Whether `self` and `other` are the same store.
    pub fn same(&self, other: &ObjectStore) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Counts of what the store holds now.
    pub fn stats(&self) -> StoreStats {
        let st = self.inner.lock();
        let table = |v: &[HolderStats; 4]| -> BTreeMap<String, HolderStats> {
            Holder::ALL
                .iter()
                .map(|h| (h.name().to_string(), v[*h as usize].clone()))
                .collect()
        };
        let (holders, peak_holders) = (table(&st.held), table(&st.peak_held));
        StoreStats {
            budget: self.inner.budget as u64,
            live: st.live as u64,
            reserved: st.reserved as u64,
            peak: st.peak as u64,
            objects: st.objects.len() as u64,
            reservations: st.reservations as u64,
            peak_objects: st.peak_objects as u64,
            holders,
            peak_holders,
        }
    }
}

impl Inner {
    fn publish(&self, st: &State) {
        if let Some(g) = &self.gauge {
            g.store_gauge(st.live as u64, st.reserved as u64, st.objects.len() as u64);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the table half-updated
        // (every update is a few integer writes), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ptr(&self, offset: usize) -> *mut u8 {
        // SAFETY: callers pass offsets inside the mapping.
        unsafe { self.map.as_mut_ptr().add(offset) }
    }

    /// Returns an extent to the free list, and the whole pages of the free
    /// run it joins to the kernel, so resident memory follows live bytes.
    fn release(&self, st: &mut State, offset: usize, size: usize) {
        let (run, len) = st.put_extent(offset, size);
        self.punch(run, len);
    }

    fn punch(&self, offset: usize, size: usize) {
        let page = 4096;
        let start = offset.div_ceil(page) * page;
        let end = (offset + size) / page * page;
        if end > start {
            // SAFETY: the range lies inside the mapping and belongs to no
            // object or reservation any more. Failure only costs memory.
            unsafe {
                libc::fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(&self.file),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    start as libc::off_t,
                    (end - start) as libc::off_t,
                );
            }
        }
    }
}

impl State {
    fn take_extent(&mut self, size: usize) -> Option<usize> {
        let (&off, &len) = self.free.iter().find(|(_, &len)| len >= size)?;
        self.free.remove(&off);
        if len > size {
            self.free.insert(off + size, len - size);
        }
        Some(off)
    }

    /// Frees an extent, coalescing it; returns the free run it is now in.
    fn put_extent(&mut self, mut offset: usize, mut size: usize) -> (usize, usize) {
        if let Some((&prev, &plen)) = self.free.range(..offset).next_back() {
            if prev + plen == offset {
                self.free.remove(&prev);
                offset = prev;
                size += plen;
            }
        }
        if let Some(&nlen) = self.free.get(&(offset + size)) {
            self.free.remove(&(offset + size));
            size += nlen;
        }
        self.free.insert(offset, size);
        (offset, size)
    }

    fn note_peak(&mut self) {
        self.peak = self.peak.max(self.live + self.reserved);
        self.peak_objects = self.peak_objects.max(self.objects.len());
    }

    /// Moves `bytes` of one object between holders (`None`: in or out).
    fn hold(&mut self, from: Option<Holder>, to: Option<Holder>, bytes: usize) {
        if let Some(h) = from {
            let c = &mut self.held[h as usize];
            c.objects -= 1;
            c.bytes -= bytes as u64;
        }
        if let Some(h) = to {
            let c = &mut self.held[h as usize];
            c.objects += 1;
            c.bytes += bytes as u64;
            let p = &mut self.peak_held[h as usize];
            p.objects = p.objects.max(c.objects);
            p.bytes = p.bytes.max(c.bytes);
        }
    }

    fn trace(&self, what: &'static str, id: u64, bytes: usize) {
        tracing::trace!(
            what,
            object = id,
            bytes,
            live = self.live,
            reserved = self.reserved,
            objects = self.objects.len(),
            source = self.held[0].bytes,
            in_flight = self.held[1].bytes,
            reorder = self.held[2].bytes,
            sink = self.held[3].bytes,
            "store"
        );
    }
}

fn round_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

fn memfd(name: &str) -> io::Result<File> {
    let cname = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: plain syscall; the descriptor is owned by the File from here on.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Bytes set aside in the store before they are written. Dropping it gives
/// them back; [`Reservation::writer`] turns it into an object.
pub struct Reservation {
    store: Arc<Inner>,
    offset: usize,
    size: usize,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reservation({} bytes)", self.size)
    }
}

impl Reservation {
    /// The bytes reserved.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Where the reserved bytes start in the shared region
    /// ([`ObjectStore::shared_fd`]).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Seals an object whose first `len` bytes another process wrote in
    /// place through the shared region; the unused tail goes back to the
    /// store. `len` larger than the reservation is an error.
    pub fn finish_written(self, len: usize, holder: Holder) -> io::Result<ObjectRef> {
        if len > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{len} bytes written into a reservation of {}", self.size),
            ));
        }
        let mut w = self.writer();
        w.written = len;
        Ok(w.finish(holder))
    }

    /// A writer over the reserved bytes; [`ObjectWriter::finish`] makes the
    /// object, returning the unused tail to the store.
    pub fn writer(self) -> ObjectWriter {
        ObjectWriter {
            reservation: self,
            written: 0,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.size == 0 {
            return;
        }
        let mut st = self.store.lock();
        st.reserved -= self.size;
        st.reservations -= 1;
        self.store.release(&mut st, self.offset, self.size);
        self.store.publish(&st);
    }
}

/// Writes an object into a reservation. Writing past the reservation is an
/// `io::Error`, never an overflow.
pub struct ObjectWriter {
    reservation: Reservation,
    written: usize,
}

impl io::Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.reservation.size - self.written;
        if buf.len() > room {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "object larger than its reservation of {} bytes",
                    self.reservation.size
                ),
            ));
        }
        let dst = self
            .reservation
            .store
            .ptr(self.reservation.offset + self.written);
        // SAFETY: the destination lies inside this reservation's extent,
        // which nothing else reads or writes until the object is finished.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), dst, buf.len()) };
        self.written += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter {
    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Seals the object: it becomes live with one reference, held by `holder`.
    pub fn finish(mut self, holder: Holder) -> ObjectRef {
        let res = &mut self.reservation;
        let store = res.store.clone();
        let capacity = round_up(self.written.max(1));
        let mut st = store.lock();
        let (offset, size) = (res.offset, res.size);
        res.size = 0; // the reservation is consumed: its drop does nothing
        st.reserved -= size;
        st.reservations -= 1;
        if size > capacity {
            store.release(&mut st, offset + capacity, size - capacity);
        }
        let id = st.next_id;
        st.next_id += 1;
        st.live += capacity;
        st.objects.insert(
            id,
            Entry {
                offset,
                capacity,
                refs: 1,
                holder,
            },
        );
        st.hold(None, Some(holder), capacity);
        st.note_peak();
        st.trace("put", id, capacity);
        store.publish(&st);
        assert!(st.live + st.reserved <= store.budget, "store over budget");
        drop(st);
        ObjectRef {
            store,
            id,
            offset,
            len: self.written,
        }
    }
}

/// A counted reference to an object in the store. Clone adds a reference,
/// drop removes one; the object is freed when the last one goes.
pub struct ObjectRef {
    store: Arc<Inner>,
    id: u64,
    offset: usize,
    len: usize,
}

impl std::fmt::Debug for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectRef(#{}, {} bytes)", self.id, self.len)
    }
}

impl ObjectRef {
    /// The object's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the object is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the object starts in the shared region
    /// ([`ObjectStore::shared_fd`]).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The store the object lives in.
    pub fn store(&self) -> ObjectStore {
        ObjectStore {
            inner: self.store.clone(),
        }
    }

    /// The object's bytes, read in place from the shared mapping.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the extent stays allocated and unwritten while any
        // reference to it exists, and `self` is one.
        unsafe { std::slice::from_raw_parts(self.store.ptr(self.offset), self.len) }
    }

    /// The object as `bytes::Bytes` that keep a reference alive: what Arrow
    /// decodes from without copying.
    pub fn to_bytes(&self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self.clone())
    }

    /// Records who pins the object now, for the accounting table.
    pub fn set_holder(&self, holder: Holder) {
        if !self.store.holders {
            return;
        }
        let mut st = self.store.lock();
        let Some(e) = st.objects.get_mut(&self.id) else {
            return;
        };
        let (from, bytes) = (e.holder, e.capacity);
        e.holder = holder;
        if from != holder {
            st.hold(Some(from), Some(holder), bytes);
            st.trace("move", self.id, bytes);
        }
    }

    /// References held to this object right now.
    pub fn ref_count(&self) -> usize {
        let st = self.store.lock();
        st.objects.get(&self.id).map_or(0, |e| e.refs)
    }
}

impl AsRef<[u8]> for ObjectRef {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Clone for ObjectRef {
    fn clone(&self) -> Self {
        let mut st = self.store.lock();
        if let Some(e) = st.objects.get_mut(&self.id) {
            e.refs += 1;
        }
        ObjectRef {
            store: self.store.clone(),
            id: self.id,
            offset: self.offset,
            len: self.len,
        }
    }
}

impl Drop for ObjectRef {
    fn drop(&mut self) {
        let mut st = self.store.lock();
        let Some(e) = st.objects.get_mut(&self.id) else {
            return;
        };
        e.refs -= 1;
        if e.refs > 0 {
            return;
        }
        let (offset, capacity, holder) = (e.offset, e.capacity, e.holder);
        st.objects.remove(&self.id);
        st.live -= capacity;
        st.hold(Some(holder), None, capacity);
        st.trace("free", self.id, capacity);
        self.store.release(&mut st, offset, capacity);
        self.store.publish(&st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn put(store: &ObjectStore, data: &[u8]) -> ObjectRef {
        let r = store.try_reserve(data.len()).unwrap().unwrap();
        let mut w = r.writer();
        w.write_all(data).unwrap();
        w.finish(Holder::Source)
    }

    #[test]
    fn counts_live_and_reserved_exactly() {
        let store = ObjectStore::new(4096).unwrap();
        let r = store.try_reserve(100).unwrap().unwrap();
        assert_eq!(store.stats().reserved, 128);
        let mut w = r.writer();
        w.write_all(&[7; 70]).unwrap();
        let obj = w.finish(Holder::Source);
        let s = store.stats();
        assert_eq!((s.live, s.reserved, s.objects), (128, 0, 1));
        assert_eq!(obj.as_slice(), &[7; 70][..]);
        let c = obj.clone();
        assert_eq!(obj.ref_count(), 2);
        drop(obj);
        assert_eq!(store.stats().live, 128);
        drop(c);
        let s = store.stats();
        assert_eq!((s.live, s.reserved, s.objects), (0, 0, 0));
        assert_eq!(s.peak, 128);
        assert_eq!(
            s.peak_holders["source"],
            HolderStats {
                objects: 1,
                bytes: 128
            }
        );
        assert_eq!(s.holders["source"], HolderStats::default());
    }

    #[test]
    fn holders_follow_their_objects() {
        let store = ObjectStore::new(4096).unwrap();
        let a = put(&store, &[1; 64]);
        let b = put(&store, &[1; 64]);
        a.set_holder(Holder::Reorder);
        let s = store.stats();
        assert_eq!(
            s.holders["source"],
            HolderStats {
                objects: 1,
                bytes: 64
            }
        );
        assert_eq!(
            s.holders["reorder"],
            HolderStats {
                objects: 1,
                bytes: 64
            }
        );
        assert_eq!(
            s.peak_holders["source"],
            HolderStats {
                objects: 2,
                bytes: 128
            }
        );
        drop((a, b));
        assert!(store
            .stats()
            .holders
            .values()
            .all(|h| h.objects == 0 && h.bytes == 0));
    }

    #[test]
    fn refuses_beyond_budget_and_admits_after_release() {
        let store = ObjectStore::new(1024).unwrap();
        let a = put(&store, &[1; 600]);
        assert!(store.try_reserve(600).unwrap().is_none());
        assert!(matches!(
            store.try_reserve(2000),
            Err(StoreError::TooLarge { .. })
        ));
        drop(a);
        assert!(store.try_reserve(600).unwrap().is_some());
        assert!(store.stats().peak <= 1024);
    }

    #[test]
    fn writing_past_a_reservation_fails() {
        let store = ObjectStore::new(1024).unwrap();
        let mut w = store.try_reserve(64).unwrap().unwrap().writer();
        assert!(w.write_all(&[0; 65]).is_err());
    }

    #[test]
    fn bytes_keep_the_object_alive() {
        let store = ObjectStore::new(1024).unwrap();
        let obj = put(&store, b"hello");
        let b = obj.to_bytes();
        drop(obj);
        assert_eq!(store.stats().objects, 1);
        assert_eq!(&b[..], b"hello");
        drop(b);
        assert_eq!(store.stats().objects, 0);
    }

    #[test]
    fn extents_coalesce_after_fragmenting_frees() {
        let store = ObjectStore::new(64 * 16).unwrap();
        let objs: Vec<_> = (0..16).map(|_| put(&store, &[1; 64])).collect();
        assert!(store.try_reserve(64).unwrap().is_none());
        drop(objs);
        // The whole budget is one free run again.
        assert!(store.try_reserve(64 * 16).unwrap().is_some());
    }
}
