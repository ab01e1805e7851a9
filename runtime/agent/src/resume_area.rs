//! The resume area: pages of init's own memory into which the VMM writes
//! this run's [`Resume`](crate::Resume) frame while the guest is stopped,
//! so that a restored guest reads its parameters and seed without a vsock
//! round trip (connect, the host's answer, close) on its way to the
//! command.
//!
//! Before its snapshot point init maps [`DATA_PAGES`] pages, locked in
//! RAM, and makes its snapshot-point port write with their virtual address
//! in RSI and their count in RDI. The VMM finds each page's guest-physical
//! address in the guest's own page tables (the CR3 of the vCPU that wrote,
//! walked once every vCPU is parked), keeps the list with a warm start's
//! snapshot, and writes the frame, as [`encode`](crate::encode)d, across
//! the pages in order: in the run that takes the snapshot after saving it
//! (so no snapshot holds a run's frame), in a restored run before its
//! vCPUs start. Pages that begin with four zero bytes hold no frame (one too
//! large for them, a VMM that found no area): init then asks on
//! [`RESUME_PORT`](crate::RESUME_PORT) as before.

/// The size of a page of the area.
pub const PAGE: usize = 4096;
/// The area's pages: a frame of up to 64 KiB fits, the parameters and
/// environment of any ordinary run many times over.
pub const DATA_PAGES: usize = 16;

/// `frame` (an [`encode`](crate::encode)d frame) split into what each of
/// `pages` pages receives, in order; `None` when it does not fit (or is
/// empty), and then nothing is written.
pub fn split(frame: &[u8], pages: usize) -> Option<std::slice::Chunks<'_, u8>> {
    (!frame.is_empty() && frame.len() <= pages * PAGE).then(|| frame.chunks(PAGE))
}

/// The frame the pages (joined, in order) hold, as [`read`](crate::read)
/// takes it; `None` where they begin with zeros (no frame was written).
pub fn frame_in(data: &[u8]) -> Option<&[u8]> {
    let len = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
    if len == 0 {
        return None;
    }
    Some(&data[..data.len().min(4 + len)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Resume;

    #[test]
    fn a_frame_split_across_pages_reads_back_whole() {
        let resume = Resume {
            params: format!("husk.run={}", "e".repeat(3 * PAGE)),
            seed: vec![7; 32],
        };
        let frame = crate::encode(&resume);
        let mut data = vec![0u8; DATA_PAGES * PAGE];
        let chunks = split(&frame, DATA_PAGES).unwrap();
        assert_eq!(chunks.len(), frame.len().div_ceil(PAGE));
        for (i, chunk) in chunks.enumerate() {
            data[i * PAGE..i * PAGE + chunk.len()].copy_from_slice(chunk);
        }
        let mut held = frame_in(&data).unwrap();
        let back: Resume = crate::read(&mut held).unwrap().unwrap();
        assert_eq!(back, resume);
    }

    #[test]
    fn no_frame_where_none_was_written_or_one_would_not_fit() {
        assert_eq!(frame_in(&[0u8; PAGE]), None);
        assert_eq!(frame_in(&[1, 0]), None);
        assert!(split(&[], DATA_PAGES).is_none());
        assert!(split(&vec![1u8; DATA_PAGES * PAGE + 1], DATA_PAGES).is_none());
        assert!(split(&vec![1u8; DATA_PAGES * PAGE], DATA_PAGES).is_some());
        // A length past the pages reads as a truncated frame, not past them.
        let mut data = vec![0u8; PAGE];
        data[..4].copy_from_slice(&(2 * PAGE as u32).to_le_bytes());
        let mut held = frame_in(&data).unwrap();
        assert!(crate::read::<Resume>(&mut held).is_err());
    }
}
