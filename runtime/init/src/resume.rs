//! A warm start's resume: after its snapshot point, init reads this run's
//! parameters and seed from its resume area, where the VMM wrote them while
//! the guest was stopped (see `agent::resume_area`), else from the host's
//! [`::agent::RESUME_PORT`] over vsock.

use std::io;

use ::agent::resume_area::{self, DATA_PAGES, PAGE};

use crate::sys::ControlPort;

/// The area's pages, mapped and locked until the frame is read (the VMM
/// writes into them only while init is at its snapshot point: when it
/// takes the snapshot, and when it restores one).
pub struct ResumeArea {
    base: *mut u8,
}

impl ResumeArea {
    /// Maps the pages, each given a frame of its own and locked in RAM.
    pub fn new() -> io::Result<ResumeArea> {
        // SAFETY: a new anonymous private mapping; no existing memory is
        // touched. MAP_POPULATE with PROT_WRITE gives every page a frame of
        // its own, and MAP_LOCKED keeps it resident.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                DATA_PAGES * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | libc::MAP_LOCKED,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = base.cast::<u8>();
        for page in 0..DATA_PAGES {
            // SAFETY: the first byte of a page of this new mapping; written,
            // so that no page is left the shared zero page.
            unsafe { std::ptr::write_volatile(base.add(page * PAGE), 0) };
        }
        Ok(ResumeArea { base })
    }

    /// The frame the VMM wrote into the pages, if it wrote one.
    fn frame(&self) -> Option<Vec<u8>> {
        // SAFETY: the mapping lives as long as `self`; the VMM wrote it
        // while every vCPU was stopped, so no write is under way while
        // this reads.
        let data = unsafe { std::slice::from_raw_parts(self.base, DATA_PAGES * PAGE) };
        resume_area::frame_in(data).map(<[u8]>::to_vec)
    }
}

impl Drop for ResumeArea {
    fn drop(&mut self) {
        // SAFETY: `base` is this area's own mapping, of this length, and
        // no slice of it outlives `self`.
        unsafe { libc::munmap(self.base.cast(), DATA_PAGES * PAGE) };
    }
}

/// Marks the snapshot point (the VMM saves the VM during this port write,
/// and a restored VM goes on from it) and returns this run's resume frame:
/// from the resume area where the VMM wrote one, else from vsock; `None`
/// where neither has one (the VM has no vsock device, the host serves no
/// parameters).
pub fn at_snapshot_point(control: &ControlPort) -> Result<Option<::agent::Resume>, String> {
    let area = ResumeArea::new()
        .map_err(|e| crate::say(&format!("no resume area, parameters come by vsock: {e}")))
        .ok();
    match &area {
        Some(a) => control.snapshot_point(a.base as u64, DATA_PAGES as u64),
        None => control.snapshot_point(0, 0),
    }
    if let Some(frame) = area.as_ref().and_then(ResumeArea::frame) {
        return ::agent::read(&mut frame.as_slice()).map_err(|e| e.to_string());
    }
    by_vsock().map_err(|e| e.to_string())
}

/// This run's parameters, from the host's [`::agent::RESUME_PORT`].
fn by_vsock() -> Result<Option<::agent::Resume>, ::agent::FrameError> {
    let fd = match crate::sys::vsock_connect(libc::VMADDR_CID_HOST, ::agent::RESUME_PORT) {
        Ok(fd) => fd,
        Err(_) => return Ok(None),
    };
    let mut conn = std::os::unix::net::UnixStream::from(fd);
    ::agent::read(&mut conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_area_holds_no_frame_until_one_is_written_into_it() {
        let area = ResumeArea::new().unwrap();
        assert!(area.frame().is_none(), "a new area holds no frame");
        let resume = ::agent::Resume {
            params: "husk.run=7b7d".into(),
            seed: vec![3; 32],
        };
        let frame = ::agent::encode(&resume);
        // SAFETY: what the VMM does, from inside: the frame copied to the
        // start of the area's own mapping, which is larger.
        unsafe { std::ptr::copy_nonoverlapping(frame.as_ptr(), area.base, frame.len()) };
        let held = area.frame().unwrap();
        assert_eq!(::agent::read(&mut held.as_slice()).unwrap(), Some(resume));
    }
}
