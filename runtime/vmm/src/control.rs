//! The guest control port: how the guest tells the VMM how far it got and
//! how the appliance's command ended, and the timings both sides mark.
//!
//! The guest writes one 32-bit little-endian value to I/O port
//! [`PORT`] (`outl`): bits 15..8 are the kind, bits 7..0 the argument.
//!
//! | kind | argument | meaning |
//! |---|---|---|
//! | 1 | 1 | the guest's init is running |
//! | 1 | 2 | the appliance's command was started |
//! | 1 | 3 | init is at its snapshot point (with `husk.snapshot` on the command line); RSI and RDI name its resume area (`agent::resume_area`) |
//! | 2 | status | the command exited with `status` (0-255) |
//!
//! A port write is one VM exit, taken before the guest moves on, so the
//! marks are the guest's real progress. Under another VMM the writes go
//! nowhere and the guest runs the same.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The control port (unused by any PC device).
pub const PORT: u16 = 0x600;

const KIND_MARK: u32 = 1;
const KIND_STATUS: u32 = 2;

/// The points of a boot that `husk run --timings` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    VmCreated,
    MemoryReady,
    KernelLoaded,
    VcpusStarted,
    GuestInit,
    CommandStarted,
    CommandExited,
    /// init said the VM may end (after the status), and the VMM ended it.
    GuestDone,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::VmCreated => "VM created",
            Phase::MemoryReady => "memory ready",
            Phase::KernelLoaded => "kernel loaded",
            Phase::VcpusStarted => "vCPUs started",
            Phase::GuestInit => "guest reached init",
            Phase::CommandStarted => "command started",
            Phase::CommandExited => "command exited",
            Phase::GuestDone => "guest done",
        }
    }
}

/// A guest write to the control port the VMM acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    Nothing,
    /// init asks for its snapshot to be taken now.
    SnapshotPoint,
    /// The command was started (a warm start records its working set).
    Command,
    /// init has reported the status, its output is out and nothing else
    /// in the guest needs the VM: the VMM may end it without waiting for
    /// the guest kernel's power-off.
    Done,
}

/// What the guest reported, and when each phase was reached, timed from
/// `started` (the process start).
pub struct GuestReport {
    started: Instant,
    marks: Mutex<Vec<(Phase, Duration)>>,
    status: Mutex<Option<u8>>,
}

impl GuestReport {
    pub fn new(started: Instant) -> Self {
        GuestReport {
            started,
            marks: Mutex::default(),
            status: Mutex::default(),
        }
    }

    /// Records that `phase` was reached now.
    pub fn mark(&self, phase: Phase) {
        let at = self.started.elapsed();
        self.marks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((phase, at));
    }

    /// Handles a guest write to the control port: what the VMM must act
    /// on, if anything.
    pub fn guest_write(&self, data: &[u8]) -> Reached {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return Reached::Nothing;
        };
        let v = u32::from_le_bytes(bytes);
        match (v >> 8, v & 0xff) {
            (KIND_MARK, 1) => self.mark(Phase::GuestInit),
            (KIND_MARK, 2) => {
                self.mark(Phase::CommandStarted);
                return Reached::Command;
            }
            (KIND_MARK, 3) => return Reached::SnapshotPoint,
            // Only after a status: an end with no status would read as a
            // guest that stopped without one.
            (KIND_MARK, 4) if self.status().is_some() => return Reached::Done,
            (KIND_STATUS, status) => {
                self.mark(Phase::CommandExited);
                *self.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(status as u8);
            }
            _ => {}
        }
        Reached::Nothing
    }

    /// Whether the guest's init said it is running (its console is open).
    pub fn init_running(&self) -> bool {
        self.marks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(p, _)| *p == Phase::GuestInit)
    }

    /// The command's exit status, if the guest reported one.
    pub fn status(&self) -> Option<u8> {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Phases in the order they were reached.
    pub fn marks(&self) -> Vec<(Phase, Duration)> {
        let mut m = self.marks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        m.sort_by_key(|(_, at)| *at);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_marks_from_port_writes() {
        let r = GuestReport::new(Instant::now());
        assert_eq!(r.guest_write(&0x0101u32.to_le_bytes()), Reached::Nothing);
        assert_eq!(r.guest_write(&0x0102u32.to_le_bytes()), Reached::Command);
        // The end before any status is no end.
        assert_eq!(r.guest_write(&0x0104u32.to_le_bytes()), Reached::Nothing);
        assert_eq!(r.guest_write(&0x0203u32.to_le_bytes()), Reached::Nothing);
        assert_eq!(r.guest_write(&0x0104u32.to_le_bytes()), Reached::Done);
        assert_eq!(
            r.guest_write(&0x0103u32.to_le_bytes()),
            Reached::SnapshotPoint
        );
        assert_eq!(r.status(), Some(3));
        let phases: Vec<Phase> = r.marks().into_iter().map(|m| m.0).collect();
        assert_eq!(
            phases,
            [
                Phase::GuestInit,
                Phase::CommandStarted,
                Phase::CommandExited
            ]
        );
    }

    #[test]
    fn malformed_writes_are_ignored() {
        let r = GuestReport::new(Instant::now());
        for write in [&[2][..], &0x0901u32.to_le_bytes(), &[0xff; 8]] {
            assert_eq!(r.guest_write(write), Reached::Nothing);
        }
        assert_eq!(r.status(), None);
        assert!(r.marks().is_empty());
    }
}
