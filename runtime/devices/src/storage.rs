//! Where a disk's bytes live: a host file read and written in place, or a
//! base image the guest may write to while the image itself never changes
//! (an [`Overlay`]), which is how an appliance's root disk boots: every run
//! starts from the image the builder made, without copying it first.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A disk's backing store.
pub enum Storage {
    /// A host file, opened with the access the disk needs.
    File(File),
    /// A base image plus this VM's writes.
    Overlay(Overlay),
}

impl Storage {
    /// The disk's size in bytes.
    pub fn len(&self) -> io::Result<u64> {
        match self {
            Storage::File(f) => Ok(f.metadata()?.len()),
            Storage::Overlay(o) => Ok(o.len),
        }
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Storage::File(f) => f.read_exact_at(buf, offset),
            Storage::Overlay(o) => o.read_exact_at(buf, offset),
        }
    }

    pub fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self {
            Storage::File(f) => f.write_all_at(buf, offset),
            Storage::Overlay(o) => o.write_all_at(buf, offset),
        }
    }

    /// Makes written data durable. An overlay's writes end with the VM, so
    /// there is nothing to make durable.
    pub fn flush(&self) -> io::Result<()> {
        match self {
            Storage::File(f) => f.sync_data(),
            Storage::Overlay(_) => Ok(()),
        }
    }
}

/// A read-only base file and a sparse upper file of the same size that
/// takes every write. Which byte ranges were written is kept in memory
/// (disjoint, never adjacent ranges), so memory grows with how scattered
/// the writes are, not with the disk's size; reads take each piece from
/// the upper file where it was written, from the base elsewhere.
pub struct Overlay {
    base: File,
    upper: File,
    len: u64,
    /// Written ranges: start -> end (exclusive).
    written: BTreeMap<u64, u64>,
}

impl Overlay {
    /// `upper` must be an empty file the caller owns (an unnamed temporary
    /// file is best: it vanishes with the VM); it is grown, sparse, to the
    /// base's size.
    pub fn new(base: File, upper: File) -> io::Result<Self> {
        let len = base.metadata()?.len();
        upper.set_len(len)?;
        Ok(Overlay {
            base,
            upper,
            len,
            written: BTreeMap::new(),
        })
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<u64> {
        offset
            .checked_add(len as u64)
            .filter(|&end| end <= self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the end of the disk"))
    }

    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = self.check(offset, buf.len())?;
        let mut pos = offset;
        // The written range that starts at or before `offset` may cover it.
        let first = self.written.range(..=offset).next_back();
        let rest = self.written.range(offset.saturating_add(1)..end);
        for (&start, &stop) in first.into_iter().chain(rest) {
            if stop <= pos {
                continue;
            }
            if start > pos {
                let gap = &mut buf[(pos - offset) as usize..(start - offset) as usize];
                self.base.read_exact_at(gap, pos)?;
                pos = start;
            }
            let until = stop.min(end);
            let piece = &mut buf[(pos - offset) as usize..(until - offset) as usize];
            self.upper.read_exact_at(piece, pos)?;
            pos = until;
        }
        if pos < end {
            self.base
                .read_exact_at(&mut buf[(pos - offset) as usize..], pos)?;
        }
        Ok(())
    }

    pub fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = self.check(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        self.upper.write_all_at(buf, offset)?;
        // Merge with every range that overlaps or touches [offset, end).
        let (mut start, mut stop) = (offset, end);
        let touching: Vec<(u64, u64)> = self
            .written
            .range(..=end)
            .rev()
            .take_while(|(_, &e)| e >= offset)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.written.remove(&s);
            start = start.min(s);
            stop = stop.max(e);
        }
        self.written.insert(start, stop);
        Ok(())
    }

    /// How many separate ranges have been written (for tests and figures).
    pub fn written_ranges(&self) -> usize {
        self.written.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(base: &[u8]) -> (tempfile::NamedTempFile, Overlay) {
        let b = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(b.path(), base).unwrap();
        let base_file = File::open(b.path()).unwrap();
        let upper = tempfile::tempfile().unwrap();
        (b, Overlay::new(base_file, upper).unwrap())
    }

    #[test]
    fn reads_come_from_the_base_until_written() {
        let base: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let (b, mut o) = files(&base);
        let mut buf = vec![0u8; 4096];
        o.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, base);
        o.write_all_at(&[0xee; 100], 1000).unwrap();
        o.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..1000], &base[..1000]);
        assert!(buf[1000..1100].iter().all(|&x| x == 0xee));
        assert_eq!(&buf[1100..], &base[1100..]);
        // The base file itself is untouched.
        assert_eq!(std::fs::read(b.path()).unwrap(), base);
    }

    #[test]
    fn overlapping_and_touching_writes_merge() {
        let (_b, mut o) = files(&[0u8; 8192]);
        o.write_all_at(&[1; 512], 0).unwrap();
        o.write_all_at(&[2; 512], 1024).unwrap();
        assert_eq!(o.written_ranges(), 2);
        o.write_all_at(&[3; 512], 512).unwrap(); // touches both
        assert_eq!(o.written_ranges(), 1);
        o.write_all_at(&[4; 100], 700).unwrap(); // inside
        assert_eq!(o.written_ranges(), 1);
        let mut buf = vec![0u8; 1536];
        o.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf[..512].iter().all(|&x| x == 1));
        assert!(buf[512..700].iter().all(|&x| x == 3));
        assert!(buf[700..800].iter().all(|&x| x == 4));
        assert!(buf[800..1024].iter().all(|&x| x == 3));
        assert!(buf[1024..].iter().all(|&x| x == 2));
    }

    #[test]
    fn out_of_range_requests_fail_and_change_nothing() {
        let (_b, mut o) = files(&[7u8; 1024]);
        assert!(o.write_all_at(&[1; 512], 768).is_err());
        assert!(o.write_all_at(&[1; 1], u64::MAX).is_err());
        let mut buf = [0u8; 16];
        assert!(o.read_exact_at(&mut buf, 1020).is_err());
        assert_eq!(o.written_ranges(), 0);
        o.read_exact_at(&mut buf, 1008).unwrap();
        assert_eq!(buf, [7u8; 16]);
    }

    /// Random writes and reads against a plain byte vector.
    #[test]
    fn matches_a_model_under_random_io() {
        const LEN: usize = 64 * 1024;
        let base: Vec<u8> = (0..LEN).map(|i| (i * 7 % 251) as u8).collect();
        let (_b, mut o) = files(&base);
        let mut model = base.clone();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..2000 {
            let off = next(LEN);
            let len = next((LEN - off).min(3000)) + 1;
            if len > LEN - off {
                continue;
            }
            if round % 3 == 0 {
                let data: Vec<u8> = (0..len).map(|i| (round + i) as u8).collect();
                o.write_all_at(&data, off as u64).unwrap();
                model[off..off + len].copy_from_slice(&data);
            } else {
                let mut buf = vec![0u8; len];
                o.read_exact_at(&mut buf, off as u64).unwrap();
                assert_eq!(
                    buf,
                    model[off..off + len],
                    "read {len} at {off}, round {round}"
                );
            }
        }
        let mut all = vec![0u8; LEN];
        o.read_exact_at(&mut all, 0).unwrap();
        assert_eq!(all, model);
    }
}
