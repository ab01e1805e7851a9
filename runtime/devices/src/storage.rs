//! Where a disk's bytes live: a host file read and written in place, or a
//! base image the guest may write to while the image itself never changes
//! (an [`Overlay`]), which is how an appliance's root disk boots: every run
//! starts from the image the builder made, without copying it first.

use std::fs::File;
use std::io::{self, Write};
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
    pub fn size(&self) -> io::Result<u64> {
        match self {
            Storage::File(f) => Ok(f.metadata()?.len()),
            Storage::Overlay(o) => Ok(o.len),
        }
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

    /// The disk's own blocks as a snapshot keeps them: an overlay's
    /// written blocks saved into `out` (see [`Overlay::save`]); `None` for
    /// a host file, which is its own state.
    pub fn save(&self, out: &File) -> io::Result<Option<Vec<(u64, u64)>>> {
        match self {
            Storage::File(_) => Ok(None),
            Storage::Overlay(o) => o.save(out).map(Some),
        }
    }

    /// Makes written data durable. A temporary overlay's writes end with
    /// the VM, so there is nothing to make durable; a kept one's blocks
    /// and journal are synced.
    pub fn flush(&self) -> io::Result<()> {
        match self {
            Storage::File(f) => f.sync_data(),
            Storage::Overlay(o) => match &o.journal {
                Some(journal) => o.upper.sync_data().and_then(|()| journal.sync_data()),
                None => Ok(()),
            },
        }
    }
}

/// A read-only base file and a sparse upper file of the same size that
/// takes every write, in blocks of [`BLOCK`] bytes: a write that covers
/// part of a block not written before first copies the block from below
/// (as qcow2 does with its clusters). Which blocks were written is a
/// [`Bitmap`], so its memory is bounded by the disk's size however a guest
/// scatters its writes.
///
/// A VM restored from a snapshot also has the snapshot's own writes: a
/// read-only [`Layer`] between the base and the upper file, read where it
/// has a block and this run has not written one.
pub struct Overlay {
    base: File,
    upper: File,
    len: u64,
    written: Bitmap,
    layer: Option<Layer>,
    /// A kept overlay's journal (see [`Overlay::kept`]).
    journal: Option<File>,
}

/// The first bytes of a kept overlay's journal; records follow.
pub const JOURNAL_MAGIC: &[u8; 8] = b"huskblk1";

/// A journal naming the blocks of `runs` (`(first, count)`).
pub fn journal_bytes(runs: &[(u64, u64)]) -> Vec<u8> {
    let mut out = JOURNAL_MAGIC.to_vec();
    for &(first, count) in runs {
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
    }
    out
}

/// The blocks a journal names, for a disk of `len` bytes; `None` when it
/// is not a journal or names blocks past the end. A last record cut short
/// (the VMM killed while appending it) is not counted: its block's write
/// had not completed.
pub fn read_journal(bytes: &[u8], len: u64) -> Option<Bitmap> {
    let records = bytes.strip_prefix(JOURNAL_MAGIC)?;
    let runs: Vec<(u64, u64)> = records
        .chunks_exact(16)
        .map(|r| {
            let word = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().expect("8 bytes"));
            (word(0), word(8))
        })
        .collect();
    Bitmap::from_runs(len, &runs)
}

/// The blocks an overlay saved with a snapshot: their data in `file`, at
/// their own offsets (a sparse file the size of the disk), and which they
/// are.
pub struct Layer {
    pub file: File,
    pub blocks: Bitmap,
}

/// The overlay's unit of copy-on-write.
pub const BLOCK: u64 = 4096;
const CHUNK_WORDS: usize = 512;
const CHUNK_BLOCKS: u64 = CHUNK_WORDS as u64 * 64; // 128 MiB of disk

/// One bit per block of a disk, allocated in chunks as blocks are marked
/// (at most 32 KiB per GiB of disk).
pub struct Bitmap {
    chunks: Vec<Option<Box<[u64]>>>,
}

impl Bitmap {
    /// No block marked, for a disk of `len` bytes.
    pub fn new(len: u64) -> Self {
        let chunks = len.div_ceil(BLOCK).div_ceil(CHUNK_BLOCKS) as usize;
        Bitmap {
            chunks: (0..chunks).map(|_| None).collect(),
        }
    }

    /// The blocks of `runs` (`(first, count)`) marked, for a disk of `len`
    /// bytes; `None` when a run reaches past its end.
    pub fn from_runs(len: u64, runs: &[(u64, u64)]) -> Option<Self> {
        let blocks = len.div_ceil(BLOCK);
        let mut map = Bitmap::new(len);
        for &(first, count) in runs {
            let end = first.checked_add(count).filter(|&e| e <= blocks)?;
            for b in first..end {
                map.mark(b);
            }
        }
        Some(map)
    }

    pub fn get(&self, block: u64) -> bool {
        let (chunk, bit) = (block / CHUNK_BLOCKS, block % CHUNK_BLOCKS);
        self.chunks
            .get(chunk as usize)
            .and_then(Option::as_ref)
            .is_some_and(|c| c[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    pub fn mark(&mut self, block: u64) {
        let (chunk, bit) = (block / CHUNK_BLOCKS, block % CHUNK_BLOCKS);
        let c = self.chunks[chunk as usize]
            .get_or_insert_with(|| vec![0u64; CHUNK_WORDS].into_boxed_slice());
        c[(bit / 64) as usize] |= 1 << (bit % 64);
    }

    /// How many blocks are marked.
    pub fn count(&self) -> u64 {
        self.chunks
            .iter()
            .flatten()
            .map(|c| c.iter().map(|w| u64::from(w.count_ones())).sum::<u64>())
            .sum()
    }

    /// The marked blocks as runs `(first, count)`, in order.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (ci, chunk) in self.chunks.iter().enumerate() {
            let Some(words) = chunk else { continue };
            for (wi, &word) in words.iter().enumerate() {
                let mut w = word;
                while w != 0 {
                    let bit = u64::from(w.trailing_zeros());
                    w &= w - 1;
                    let block = ci as u64 * CHUNK_BLOCKS + wi as u64 * 64 + bit;
                    match runs.last_mut() {
                        Some((first, count)) if *first + *count == block => *count += 1,
                        _ => runs.push((block, 1)),
                    }
                }
            }
        }
        runs
    }
}

/// Where a block's bytes are read from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Upper,
    Layer,
    Base,
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
            written: Bitmap::new(len),
            layer: None,
            journal: None,
        })
    }

    /// An overlay whose writes outlive the VM: `upper` (the disk's size)
    /// holds the blocks written, now and by earlier runs (`written`, read
    /// back with [`read_journal`]), at their own offsets, and `journal`
    /// (opened to append) names each block as it is first written, after
    /// its data: a block is read from `upper` only once its write is
    /// complete, so a VMM killed at any moment leaves a disk whose blocks
    /// are each old or new, as a real disk's are. A snapshot's `layer` is
    /// copied up at once, so `upper` and its journal alone are the disk.
    pub fn kept(
        base: File,
        upper: File,
        journal: File,
        written: Bitmap,
        layer: Option<Layer>,
    ) -> io::Result<Self> {
        let len = base.metadata()?.len();
        if upper.metadata()?.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the kept writes are of a disk of another size",
            ));
        }
        let mut o = Overlay {
            base,
            upper,
            len,
            written,
            layer,
            journal: Some(journal),
        };
        if let Some(layer) = o.layer.take() {
            for (first, count) in layer.blocks.runs() {
                // The run's blocks this overlay has not written, in runs
                // of their own: each copied in pieces of at most 1 MiB.
                let mut block = first;
                while block < first + count {
                    if o.written.get(block) {
                        block += 1;
                        continue;
                    }
                    let start = block;
                    while block < first + count && !o.written.get(block) && block - start < 256 {
                        block += 1;
                    }
                    let (from, to) = (start * BLOCK, (block * BLOCK).min(o.len));
                    let mut buf = vec![0u8; (to - from) as usize];
                    layer.file.read_exact_at(&mut buf, from)?;
                    o.upper.write_all_at(&buf, from)?;
                    o.note(start, block - start)?;
                }
            }
        }
        Ok(o)
    }

    /// Marks `count` blocks from `first` written, and journals those that
    /// were not.
    fn note(&mut self, first: u64, count: u64) -> io::Result<()> {
        let new = (first..first + count).any(|b| !self.written.get(b));
        for b in first..first + count {
            self.written.mark(b);
        }
        match &mut self.journal {
            Some(journal) if new => {
                journal.write_all(&journal_bytes(&[(first, count)])[JOURNAL_MAGIC.len()..])
            }
            _ => Ok(()),
        }
    }

    /// An overlay over `base` that starts with a snapshot's saved writes.
    pub fn with_layer(base: File, upper: File, layer: Layer) -> io::Result<Self> {
        let mut o = Overlay::new(base, upper)?;
        o.layer = Some(layer);
        Ok(o)
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<u64> {
        offset
            .checked_add(len as u64)
            .filter(|&end| end <= self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the end of the disk"))
    }

    fn source(&self, block: u64) -> Source {
        if self.written.get(block) {
            Source::Upper
        } else if self.layer.as_ref().is_some_and(|l| l.blocks.get(block)) {
            Source::Layer
        } else {
            Source::Base
        }
    }

    fn file(&self, source: Source) -> &File {
        match (source, &self.layer) {
            (Source::Upper, _) => &self.upper,
            (Source::Layer, Some(l)) => &l.file,
            _ => &self.base,
        }
    }

    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = self.check(offset, buf.len())?;
        let mut pos = offset;
        // Runs of blocks from the same file, one read each.
        while pos < end {
            let source = self.source(pos / BLOCK);
            let mut stop = (pos / BLOCK + 1) * BLOCK;
            while stop < end && self.source(stop / BLOCK) == source {
                stop += BLOCK;
            }
            let stop = stop.min(end);
            let piece = &mut buf[(pos - offset) as usize..(stop - offset) as usize];
            self.file(source).read_exact_at(piece, pos)?;
            pos = stop;
        }
        Ok(())
    }

    pub fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = self.check(offset, buf.len())?;
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK;
            let block_start = block * BLOCK;
            let block_end = (block_start + BLOCK).min(self.len);
            if pos == block_start && end >= block_end {
                // Whole blocks, as many as the write covers: one write.
                let run_end = if end == self.len {
                    end
                } else {
                    end - end % BLOCK
                };
                let data = &buf[(pos - offset) as usize..(run_end - offset) as usize];
                self.upper.write_all_at(data, pos)?;
                self.note(block, run_end.div_ceil(BLOCK) - block)?;
                pos = run_end;
                continue;
            }
            let stop = block_end.min(end);
            let data = &buf[(pos - offset) as usize..(stop - offset) as usize];
            let source = self.source(block);
            if source == Source::Upper {
                self.upper.write_all_at(data, pos)?;
            } else {
                // First write to part of this block: the rest comes from
                // below.
                let mut whole = vec![0u8; (block_end - block_start) as usize];
                self.file(source).read_exact_at(&mut whole, block_start)?;
                whole[(pos - block_start) as usize..(stop - block_start) as usize]
                    .copy_from_slice(data);
                self.upper.write_all_at(&whole, block_start)?;
            }
            self.note(block, 1)?;
            pos = stop;
        }
        Ok(())
    }

    /// How many blocks have been written (for tests and figures).
    pub fn written_blocks(&self) -> u64 {
        self.written.count()
    }

    /// Writes every block that differs from the base (this VM's writes and
    /// its layer's) into `out` at its own offset, and returns them as runs
    /// `(first block, count)`: what a snapshot keeps of this disk.
    pub fn save(&self, out: &File) -> io::Result<Vec<(u64, u64)>> {
        out.set_len(self.len)?;
        let mut all = Bitmap::new(self.len);
        for (first, count) in self.written.runs() {
            (first..first + count).for_each(|b| all.mark(b));
        }
        if let Some(l) = &self.layer {
            for (first, count) in l.blocks.runs() {
                (first..first + count).for_each(|b| all.mark(b));
            }
        }
        let runs = all.runs();
        let mut buf = Vec::new();
        for &(first, count) in &runs {
            let start = first * BLOCK;
            let end = ((first + count) * BLOCK).min(self.len);
            buf.resize((end - start) as usize, 0);
            self.read_exact_at(&mut buf, start)?;
            out.write_all_at(&buf, start)?;
        }
        Ok(runs)
    }

    /// How many bitmap chunks exist (memory follows writes).
    #[cfg(test)]
    fn chunks_allocated(&self) -> usize {
        self.written.chunks.iter().flatten().count()
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
    fn a_partial_block_write_keeps_the_rest_of_the_block() {
        let base: Vec<u8> = (0..3 * BLOCK as usize).map(|i| (i % 251) as u8).collect();
        let (_b, mut o) = files(&base);
        o.write_all_at(&[1; 512], 512).unwrap(); // inside block 0
        o.write_all_at(&[2; 100], 2 * BLOCK - 50).unwrap(); // across 1 and 2
        assert_eq!(o.written_blocks(), 3);
        let mut all = vec![0u8; base.len()];
        o.read_exact_at(&mut all, 0).unwrap();
        let mut want = base.clone();
        want[512..1024].fill(1);
        want[2 * BLOCK as usize - 50..2 * BLOCK as usize + 50].fill(2);
        assert_eq!(all, want);
    }

    #[test]
    fn a_write_of_whole_blocks_and_a_tail() {
        let base = vec![5u8; 8 * BLOCK as usize];
        let (_b, mut o) = files(&base);
        let data: Vec<u8> = (0..3 * BLOCK as usize + 100).map(|i| i as u8).collect();
        o.write_all_at(&data, BLOCK).unwrap();
        assert_eq!(o.written_blocks(), 4);
        let mut back = vec![0u8; 8 * BLOCK as usize];
        o.read_exact_at(&mut back, 0).unwrap();
        let mut want = base.clone();
        want[BLOCK as usize..BLOCK as usize + data.len()].copy_from_slice(&data);
        assert_eq!(back, want);
    }

    #[test]
    fn a_disk_whose_size_is_not_whole_blocks() {
        let base = vec![9u8; 4096 + 1536];
        let (_b, mut o) = files(&base);
        o.write_all_at(&[3; 512], 4096 + 512).unwrap();
        let mut tail = vec![0u8; 1536];
        o.read_exact_at(&mut tail, 4096).unwrap();
        assert_eq!(&tail[..512], &[9; 512]);
        assert_eq!(&tail[512..1024], &[3; 512]);
        assert_eq!(&tail[1024..], &[9; 512]);
        assert!(o.write_all_at(&[3; 512], 4096 + 1536).is_err());
        // Whole blocks up to the end of the disk, the short last one too.
        o.write_all_at(&vec![4; 4096 + 1536], 0).unwrap();
        assert_eq!(o.written_blocks(), 2);
        let mut all = vec![0u8; 4096 + 1536];
        o.read_exact_at(&mut all, 0).unwrap();
        assert!(all.iter().all(|&b| b == 4));
    }

    #[test]
    fn scattered_writes_keep_the_bitmap_small() {
        // 1 GiB disk, one byte written every 64 MiB: the bitmap's chunks
        // (128 MiB of disk each) are made only where writes land.
        let b = tempfile::NamedTempFile::new().unwrap();
        b.as_file().set_len(1 << 30).unwrap();
        let mut o =
            Overlay::new(File::open(b.path()).unwrap(), tempfile::tempfile().unwrap()).unwrap();
        assert_eq!(o.chunks_allocated(), 0);
        for i in 0..16u64 {
            o.write_all_at(&[1], i * (64 << 20) + 7).unwrap();
        }
        assert_eq!(o.written_blocks(), 16);
        assert_eq!(o.chunks_allocated(), 8);
    }

    #[test]
    fn out_of_range_requests_fail_and_change_nothing() {
        let (_b, mut o) = files(&[7u8; 1024]);
        assert!(o.write_all_at(&[1; 512], 768).is_err());
        assert!(o.write_all_at(&[1; 1], u64::MAX).is_err());
        let mut buf = [0u8; 16];
        assert!(o.read_exact_at(&mut buf, 1020).is_err());
        assert_eq!(o.written_blocks(), 0);
        o.read_exact_at(&mut buf, 1008).unwrap();
        assert_eq!(buf, [7u8; 16]);
    }

    #[test]
    fn saved_blocks_come_back_as_a_layer_under_a_new_run() {
        let base: Vec<u8> = (0..8 * BLOCK as usize).map(|i| (i % 253) as u8).collect();
        let (b, mut o) = files(&base);
        o.write_all_at(&[1; 100], 10).unwrap(); // block 0
        o.write_all_at(&vec![2; 2 * BLOCK as usize], 3 * BLOCK)
            .unwrap(); // 3, 4
        let saved = tempfile::tempfile().unwrap();
        let runs = o.save(&saved).unwrap();
        assert_eq!(runs, vec![(0, 1), (3, 2)]);
        let mut want = vec![0u8; base.len()];
        o.read_exact_at(&mut want, 0).unwrap();

        // A new run over the saved layer reads what the saved one did...
        let layer = Layer {
            file: saved,
            blocks: Bitmap::from_runs(base.len() as u64, &runs).unwrap(),
        };
        let mut r = Overlay::with_layer(
            File::open(b.path()).unwrap(),
            tempfile::tempfile().unwrap(),
            layer,
        )
        .unwrap();
        let mut got = vec![0u8; base.len()];
        r.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, want);
        assert_eq!(r.written_blocks(), 0);
        // ...and a partial write over a layer block keeps the layer's rest.
        r.write_all_at(&[3; 10], 3 * BLOCK + 5).unwrap();
        r.read_exact_at(&mut got, 0).unwrap();
        want[3 * BLOCK as usize + 5..3 * BLOCK as usize + 15].fill(3);
        assert_eq!(got, want);
        // Saving again keeps both.
        let again = tempfile::tempfile().unwrap();
        assert_eq!(r.save(&again).unwrap(), vec![(0, 1), (3, 2)]);
        // A run past the disk's end is no layer.
        assert!(Bitmap::from_runs(base.len() as u64, &[(7, 2)]).is_none());
    }

    /// A kept overlay over `base`: its upper file and journal (on disk),
    /// and the overlay opened on them as a VMM opens it.
    fn kept(
        base: &tempfile::NamedTempFile,
        upper: &std::path::Path,
        journal: &std::path::Path,
        layer: Option<Layer>,
    ) -> Overlay {
        let len = base.as_file().metadata().unwrap().len();
        let upper_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(upper)
            .unwrap();
        if upper_file.metadata().unwrap().len() == 0 {
            upper_file.set_len(len).unwrap();
        }
        let bytes = std::fs::read(journal).unwrap_or_else(|_| JOURNAL_MAGIC.to_vec());
        let written = read_journal(&bytes, len).unwrap();
        std::fs::write(journal, journal_bytes(&written.runs())).unwrap();
        let journal = std::fs::OpenOptions::new()
            .append(true)
            .open(journal)
            .unwrap();
        Overlay::kept(
            File::open(base.path()).unwrap(),
            upper_file,
            journal,
            written,
            layer,
        )
        .unwrap()
    }

    #[test]
    fn a_kept_overlay_s_writes_come_back_in_the_next_run() {
        let base: Vec<u8> = (0..8 * BLOCK as usize).map(|i| (i % 249) as u8).collect();
        let b = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(b.path(), &base).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (upper, journal) = (dir.path().join("upper"), dir.path().join("journal"));

        // A snapshot's layer under the first run is copied up.
        let saved = tempfile::tempfile().unwrap();
        saved.set_len(base.len() as u64).unwrap();
        saved.write_all_at(&[8; BLOCK as usize], 6 * BLOCK).unwrap();
        let layer = Layer {
            file: saved,
            blocks: Bitmap::from_runs(base.len() as u64, &[(6, 1)]).unwrap(),
        };
        let mut first = kept(&b, &upper, &journal, Some(layer));
        first.write_all_at(&[1; 10], 5).unwrap(); // block 0, partly
        first
            .write_all_at(&vec![2; 2 * BLOCK as usize], 2 * BLOCK)
            .unwrap(); // 2, 3
        first.write_all_at(&[3; 10], 2 * BLOCK).unwrap(); // 2 again: no record
        let mut want = vec![0u8; base.len()];
        first.read_exact_at(&mut want, 0).unwrap();
        Storage::Overlay(first).flush().unwrap();
        let records = (std::fs::read(&journal).unwrap().len() - 8) / 16;
        assert_eq!(records, 3, "the layer's block, block 0, blocks 2-3");

        let second = kept(&b, &upper, &journal, None);
        let mut got = vec![0u8; base.len()];
        second.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, want);
        assert_eq!(second.written_blocks(), 4);
        assert_eq!(
            (std::fs::read(&journal).unwrap().len() - 8) / 16,
            3,
            "compacted to its runs"
        );
        // The base image is untouched.
        assert_eq!(std::fs::read(b.path()).unwrap(), base);
    }

    #[test]
    fn a_long_layer_is_copied_up_around_the_blocks_already_kept() {
        let blocks = 600u64;
        let b = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(b.path(), vec![1u8; (blocks * BLOCK) as usize]).unwrap();
        let saved = tempfile::tempfile().unwrap();
        saved.set_len(blocks * BLOCK).unwrap();
        saved
            .write_all_at(&vec![2u8; (blocks * BLOCK) as usize], 0)
            .unwrap();
        let layer = Layer {
            file: saved,
            blocks: Bitmap::from_runs(blocks * BLOCK, &[(0, 500)]).unwrap(),
        };
        let upper = tempfile::tempfile().unwrap();
        upper.set_len(blocks * BLOCK).unwrap();
        upper
            .write_all_at(&[3u8; BLOCK as usize], 7 * BLOCK)
            .unwrap();
        let journal = tempfile::tempfile().unwrap();
        let kept = Bitmap::from_runs(blocks * BLOCK, &[(7, 1)]).unwrap();
        let o = Overlay::kept(
            File::open(b.path()).unwrap(),
            upper,
            journal,
            kept,
            Some(layer),
        )
        .unwrap();
        let at = |block: u64| {
            let mut byte = [0u8];
            o.read_exact_at(&mut byte, block * BLOCK + 9).unwrap();
            byte[0]
        };
        assert_eq!((at(0), at(6), at(7), at(8), at(499)), (2, 2, 3, 2, 2));
        assert_eq!(at(500), 1, "past the layer: the base");
        assert_eq!(o.written_blocks(), 500);
        assert!(o.layer.is_none());
    }

    #[test]
    fn a_journal_cut_short_or_not_one_reads_as_it_should() {
        let len = 4 * BLOCK;
        let mut bytes = journal_bytes(&[(1, 2)]);
        assert_eq!(read_journal(&bytes, len).unwrap().runs(), vec![(1, 2)]);
        // A record half appended when the VMM died: its write never completed.
        bytes.extend_from_slice(&[3, 0, 0]);
        assert_eq!(read_journal(&bytes, len).unwrap().runs(), vec![(1, 2)]);
        assert!(
            read_journal(&journal_bytes(&[(3, 2)]), len).is_none(),
            "past the end"
        );
        assert!(read_journal(b"not a journal", len).is_none());
        assert_eq!(read_journal(JOURNAL_MAGIC, len).unwrap().count(), 0);
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
