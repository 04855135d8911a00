//! Reading an object by ranges: a `Read + Seek` that holds the block being
//! read and fetches the next while it is (two blocks at most), and the
//! Parquet reader's `ChunkReader` over the same object (footer and column
//! chunks fetched as ranges, only those the reader asks for).

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::mpsc::Receiver;

use bytes::Bytes;

use super::{start, Location, BLOCK};

/// A reader of one object, block by block.
pub struct ObjectReader {
    loc: Location,
    size: u64,
    pos: u64,
    /// The block held, and where it starts.
    block: Bytes,
    block_at: u64,
    /// The next block, being fetched: where it starts, and its answer.
    ahead: Option<(u64, Receiver<io::Result<Bytes>>)>,
}

impl ObjectReader {
    /// A reader of `loc`, `size` bytes long, from its start.
    pub fn new(loc: Location, size: u64) -> Self {
        ObjectReader {
            loc,
            size,
            pos: 0,
            block: Bytes::new(),
            block_at: 0,
            ahead: None,
        }
    }

    fn fetch(&self, at: u64) -> Receiver<io::Result<Bytes>> {
        let loc = self.loc.clone();
        let end = (at + BLOCK as u64).min(self.size);
        start(async move {
            let (store, key) = (loc.store.clone(), loc.key.clone());
            object_store::ObjectStoreExt::get_range(store.as_ref(), &key, at..end)
                .await
                .map_err(super::io_error)
        })
    }

    /// Makes the block holding `pos` the one held, and starts the next.
    fn load(&mut self) -> io::Result<()> {
        let at = self.pos;
        let rx = match self.ahead.take() {
            Some((a, rx)) if a == at => rx,
            _ => self.fetch(at),
        };
        let block = rx
            .recv()
            .map_err(|_| io::Error::other("the object-storage runtime stopped"))??;
        if block.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: no bytes at offset {at} (the object changed?)",
                    self.loc.url
                ),
            ));
        }
        self.block_at = at;
        self.block = block;
        let next = at + self.block.len() as u64;
        if next < self.size {
            self.ahead = Some((next, self.fetch(next)));
        }
        Ok(())
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let end = self.block_at + self.block.len() as u64;
        if self.pos < self.block_at || self.pos >= end {
            self.load()?;
        }
        let from = (self.pos - self.block_at) as usize;
        let n = buf.len().min(self.block.len() - from);
        buf[..n].copy_from_slice(&self.block[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ObjectReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the object's start",
            )
        })?;
        Ok(self.pos)
    }
}

/// An object as Parquet's `ChunkReader`: each range it asks for is one GET.
#[derive(Clone)]
pub struct ObjectChunks {
    loc: Location,
    size: u64,
}

impl ObjectChunks {
    /// `loc`, `size` bytes long.
    pub fn new(loc: Location, size: u64) -> Self {
        ObjectChunks { loc, size }
    }
}

impl parquet::file::reader::Length for ObjectChunks {
    fn len(&self) -> u64 {
        self.size
    }
}

impl parquet::file::reader::ChunkReader for ObjectChunks {
    type T = ObjectReader;

    fn get_read(&self, start: u64) -> parquet::errors::Result<ObjectReader> {
        let mut r = ObjectReader::new(self.loc.clone(), self.size);
        r.pos = start;
        Ok(r)
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.loc
            .get_range(start..start + length as u64)
            .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
    }
}
