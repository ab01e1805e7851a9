//! What a process outside the jail asks of a running VMM (the keeper of a
//! detached VM): a snapshot (`husk snapshot create`), a pause or a resume
//! (`husk pause`, `husk unpause`), a network interface put into an empty
//! slot or taken out of one (`husk network connect`, `disconnect`), and
//! which slot a network's interface is in. The asker holds one end of a
//! `SOCK_SEQPACKET` socket pair, the VMM the other ([`OnRequest`]); each
//! request is one message, answered by one message: `+`, or `-` and why.
//!
//! A snapshot request carries the [`Target`]'s open files (the jailed VMM
//! opens nothing): the VMM pauses the vCPUs, writes the snapshot through
//! them, resumes the vCPUs and answers.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::{Header, SnapshotError, Target};

/// The VMM's end of the request socket.
#[derive(Debug)]
pub struct OnRequest {
    pub socket: UnixDatagram,
    /// What this VM's snapshots are for (the VMM fills in the devices), or
    /// why none can be taken of it: a snapshot request is then answered
    /// with that. Pauses and resumes are served either way.
    pub header: Result<Header, String>,
}

/// A request the VMM received.
#[derive(Debug)]
pub enum Asked {
    /// Write a snapshot into these files.
    Snapshot(Target),
    /// Stop every vCPU until [`Asked::Resume`].
    Pause,
    Resume,
    /// A snapshot of a VM none can be taken of: why.
    Refused(String),
    /// Put a network interface with this MAC into an empty slot, its
    /// frames on this stream (passt's framing, non-blocking); it is on
    /// this husk network (empty: none).
    Plug {
        mac: [u8; 6],
        stream: UnixStream,
        network: String,
    },
    /// Take the interface out of the slot that is this platform device.
    Unplug {
        device: u32,
    },
    /// The platform device number of the slot whose interface is on this
    /// husk network.
    Locate {
        network: String,
    },
}

/// The two ends of a request socket: the requester's, and the VMM's (for
/// [`OnRequest::socket`]); both close-on-exec.
pub fn request_pair() -> io::Result<(UnixDatagram, UnixDatagram)> {
    let (a, b) = crate::vsock::seqpacket_pair()?;
    Ok((UnixDatagram::from(a), UnixDatagram::from(b)))
}

/// A snapshot request: this tag, then the snapshot folder's path (for
/// messages), with the state, memory and disk files attached.
const SNAPSHOT_TAG: &[u8] = b"husk-snapshot\0";
/// A pause and a resume: the tag alone.
const PAUSE_TAG: &[u8] = b"husk-pause\0";
const RESUME_TAG: &[u8] = b"husk-resume\0";
/// A plug: the tag, the interface's MAC, then its network's name, with
/// its stream attached; answered with the slot's platform device number
/// (`virtio-mmio.N`).
const PLUG_TAG: &[u8] = b"husk-net-plug\0";
/// An unplug: the tag, then the platform device number (u32, little end).
const UNPLUG_TAG: &[u8] = b"husk-net-unplug\0";
/// A locate: the tag, then the network's name; answered with a platform
/// device number.
const LOCATE_TAG: &[u8] = b"husk-net-locate\0";
/// Files one request carries at most: state, memory and a disk file each
/// for up to 30 disks.
const REQUEST_FILES: usize = 32;

/// Hands `target`'s files to the VMM at the other end of `socket` and
/// waits up to `limit` for the snapshot to be written.
pub fn request(
    socket: &UnixDatagram,
    target: &Target,
    limit: Duration,
) -> Result<(), SnapshotError> {
    let mut fds = vec![target.state.as_raw_fd(), target.memory.as_raw_fd()];
    fds.extend(target.disks.iter().map(|d| d.as_raw_fd()));
    if fds.len() > REQUEST_FILES {
        return Err(SnapshotError::Refused(format!(
            "a snapshot on request takes {} disks at most",
            REQUEST_FILES - 2
        )));
    }
    let mut msg = SNAPSHOT_TAG.to_vec();
    msg.extend_from_slice(target.dir.as_os_str().as_bytes());
    ask(socket, &msg, &fds, limit)?;
    Ok(())
}

/// Asks the VMM at the other end of `socket` to stop every vCPU (`true`)
/// or to let them run again (`false`), and waits up to `limit` for it.
pub fn pause(socket: &UnixDatagram, paused: bool, limit: Duration) -> Result<(), Refused> {
    let tag = if paused { PAUSE_TAG } else { RESUME_TAG };
    ask(socket, tag, &[], limit).map(drop)
}

/// Asks the VMM to put an interface with `mac` on husk network `network`
/// into an empty slot, its frames on `stream` (made non-blocking here:
/// the VMM thread must never block on it). Returns the slot's platform
/// device number, by which the guest probes it and [`unplug`] takes it
/// out.
pub fn plug(
    socket: &UnixDatagram,
    mac: [u8; 6],
    network: &str,
    stream: &UnixStream,
    limit: Duration,
) -> Result<u32, Refused> {
    stream.set_nonblocking(true).map_err(|e| {
        Refused(format!(
            "cannot make the interface's socket non-blocking: {e}"
        ))
    })?;
    let mut msg = PLUG_TAG.to_vec();
    msg.extend_from_slice(&mac);
    msg.extend_from_slice(network.as_bytes());
    device_number(&ask(socket, &msg, &[stream.as_raw_fd()], limit)?)
}

/// Asks the VMM which slot holds the interface on husk network `network`
/// (one the VM booted on, or one put in while it runs); returns its
/// platform device number.
pub fn locate(socket: &UnixDatagram, network: &str, limit: Duration) -> Result<u32, Refused> {
    let mut msg = LOCATE_TAG.to_vec();
    msg.extend_from_slice(network.as_bytes());
    device_number(&ask(socket, &msg, &[], limit)?)
}

fn device_number(answer: &[u8]) -> Result<u32, Refused> {
    std::str::from_utf8(answer)
        .ok()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| Refused("the VMM's answer names no device".into()))
}

/// Asks the VMM to take the interface out of platform device `device`'s
/// slot; the guest's driver must have let it go first.
pub fn unplug(socket: &UnixDatagram, device: u32, limit: Duration) -> Result<(), Refused> {
    let mut msg = UNPLUG_TAG.to_vec();
    msg.extend_from_slice(&device.to_le_bytes());
    ask(socket, &msg, &[], limit).map(drop)
}

/// Why the VMM did not do what it was asked, in its words or ours.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl From<Refused> for SnapshotError {
    fn from(r: Refused) -> Self {
        SnapshotError::Refused(r.0)
    }
}

/// Sends one request and waits up to `limit` for its answer.
fn ask(
    socket: &UnixDatagram,
    msg: &[u8],
    fds: &[RawFd],
    limit: Duration,
) -> Result<Vec<u8>, Refused> {
    let gone = |e: io::Error| Refused(format!("the VMM cannot be reached ({e})"));
    // The late answer to an earlier request that timed out is not this
    // one's.
    socket.set_nonblocking(true).map_err(gone)?;
    while socket.recv(&mut [0u8; 64]).is_ok_and(|n| n > 0) {}
    socket.set_nonblocking(false).map_err(gone)?;
    socket
        .send_with_fds(&[msg], fds)
        .map_err(|e| gone(e.into()))?;
    socket.set_read_timeout(Some(limit)).map_err(gone)?;
    let mut answer = vec![0u8; 4096];
    let n = match socket.recv(&mut answer) {
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(Refused(format!(
                "the VMM did not answer within {} s",
                limit.as_secs_f32()
            )))
        }
        Err(e) => return Err(gone(e)),
    };
    match &answer[..n] {
        [] => Err(gone(io::ErrorKind::UnexpectedEof.into())),
        [b'+', rest @ ..] => Ok(rest.to_vec()),
        [_, why @ ..] => Err(Refused(String::from_utf8_lossy(why).into_owned())),
    }
}

/// A network's name in a request: UTF-8.
fn network_name(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(str::to_string)
}

impl OnRequest {
    /// The next request; `None` when none is waiting. A malformed
    /// request is an error, answered by the caller.
    pub fn receive(&self) -> io::Result<Option<Asked>> {
        let mut buf = vec![0u8; 4096 + SNAPSHOT_TAG.len()];
        let mut fds = [-1 as RawFd; REQUEST_FILES];
        let mut iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: the one iovec points into `buf`, alive and unborrowed
        // for the call, of the length it says.
        let (n, count) = match unsafe { self.socket.recv_with_fds(&mut iov, &mut fds) } {
            Ok(r) => r,
            Err(e) if e.errno() == libc::EAGAIN || e.errno() == libc::EINTR => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // SAFETY: recvmsg made the first `count` descriptors for this
        // process; each is owned from here on, closed on every way out.
        let mut files: Vec<File> = fds[..count]
            .iter()
            .map(|&fd| unsafe { File::from_raw_fd(fd) })
            .collect();
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
        let msg = &buf[..n];
        if msg == PAUSE_TAG || msg == RESUME_TAG {
            if !files.is_empty() {
                return Err(bad("a pause or resume with files"));
            }
            return Ok(Some(if msg == PAUSE_TAG {
                Asked::Pause
            } else {
                Asked::Resume
            }));
        }
        if let Some(rest) = msg.strip_prefix(PLUG_TAG) {
            let parsed = rest.split_at_checked(6).and_then(|(mac, network)| {
                Some((<[u8; 6]>::try_from(mac).ok()?, network_name(network)?))
            });
            let (Some((mac, network)), 1) = (parsed, files.len()) else {
                return Err(bad("a plug is a MAC, a network's name and one socket"));
            };
            let stream = UnixStream::from(OwnedFd::from(files.pop().expect("one file")));
            return Ok(Some(Asked::Plug {
                mac,
                stream,
                network,
            }));
        }
        if let Some(name) = msg.strip_prefix(LOCATE_TAG) {
            let (Some(network), true) = (network_name(name), files.is_empty()) else {
                return Err(bad("a locate is a network's name alone"));
            };
            return Ok(Some(Asked::Locate { network }));
        }
        if let Some(device) = msg.strip_prefix(UNPLUG_TAG) {
            let (Ok(device), true) = (<[u8; 4]>::try_from(device), files.is_empty()) else {
                return Err(bad("an unplug is a device number alone"));
            };
            return Ok(Some(Asked::Unplug {
                device: u32::from_le_bytes(device),
            }));
        }
        let Some(path) = msg.strip_prefix(SNAPSHOT_TAG) else {
            return Err(bad("not a request"));
        };
        if files.len() < 2 {
            return Err(bad("a snapshot request without its files"));
        }
        let header = match &self.header {
            Ok(h) => h.clone(),
            Err(why) => return Ok(Some(Asked::Refused(why.clone()))),
        };
        let dir = PathBuf::from(std::ffi::OsStr::from_bytes(path));
        let disks = files.split_off(2);
        let memory = files.pop().expect("two files");
        let state = files.pop().expect("one file");
        Ok(Some(Asked::Snapshot(Target {
            header,
            state,
            memory,
            disks,
            lock: None,
            dir,
        })))
    }

    /// Tells the requester how it went, with what it asked for on success
    /// (a plug's device number; nothing for the rest).
    pub fn answer(&self, result: &Result<String, String>) {
        let msg = match result {
            Ok(what) => [b"+", what.as_bytes()].concat(),
            Err(why) => {
                let mut m = b"-".to_vec();
                m.extend_from_slice(&why.as_bytes()[..why.len().min(4000)]);
                m
            }
        };
        // A requester that left hears nothing; the VM goes on.
        let _ = self.socket.send(&msg);
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    use super::super::tests::header;
    use super::super::{being_written, disk_file, STATE_FILE};
    use super::*;

    /// Waits for the next request, answers it with `answer`; the request.
    fn answering(vmm: &OnRequest, answer: Result<String, String>) -> Asked {
        loop {
            match vmm.receive().unwrap() {
                Some(asked) => {
                    vmm.answer(&answer);
                    return asked;
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    fn snapshot_of(asked: Option<Asked>) -> Option<Target> {
        match asked {
            Some(Asked::Snapshot(t)) => Some(t),
            Some(other) => panic!("a snapshot request was expected, not {other:?}"),
            None => None,
        }
    }

    #[test]
    fn a_request_hands_over_the_targets_files_and_hears_the_answer() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snap");
        let target = Target::create(&dir, header(), 2).unwrap();
        let (ours, theirs) = request_pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        let vmm = OnRequest {
            socket: theirs,
            header: Ok(header()),
        };
        assert!(vmm.receive().unwrap().is_none(), "nothing asked yet");
        let serve = |answer: Result<String, String>| {
            let (vmm, dir) = (&vmm, &dir);
            move || {
                let got = loop {
                    if let Some(t) = snapshot_of(vmm.receive().unwrap()) {
                        break t;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                };
                // The files are the target's own: written here, seen there.
                (&got.state).write_all(b"state").unwrap();
                got.disks[1].write_all_at(b"d1", 0).unwrap();
                assert_eq!(&got.dir, dir);
                assert_eq!(got.disks.len(), 2);
                assert!(got.lock.is_none(), "the requester keeps the lock");
                vmm.answer(&answer);
            }
        };
        std::thread::scope(|s| {
            s.spawn(serve(Ok(String::new())));
            request(&ours, &target, Duration::from_secs(5)).unwrap();
        });
        assert_eq!(fs::read(dir.join(STATE_FILE)).unwrap(), b"state");
        assert_eq!(fs::read(dir.join(disk_file(1))).unwrap(), b"d1");
        assert!(being_written(&dir), "the requester's target holds the lock");
        std::thread::scope(|s| {
            s.spawn(serve(Err("the vCPUs did not stop".into())));
            let err = request(&ours, &target, Duration::from_secs(5)).unwrap_err();
            assert!(err.to_string().contains("the vCPUs did not stop"), "{err}");
        });
        // Nobody answers: a clear timeout, and the late answer is not
        // taken for the next request's.
        let err = request(&ours, &target, Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("did not answer"), "{err}");
        snapshot_of(vmm.receive().unwrap()).expect("the request waits");
        vmm.answer(&Err("late".into()));
        std::thread::scope(|s| {
            s.spawn(serve(Ok(String::new())));
            request(&ours, &target, Duration::from_secs(5)).unwrap();
        });
        // A message that is no request, and the requester gone.
        ours.send(b"hello").unwrap();
        assert_eq!(
            vmm.receive().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        drop(ours);
        assert_eq!(
            vmm.receive().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        drop(target);
        assert!(!being_written(&dir));
    }

    #[test]
    fn pauses_and_resumes_are_asked_and_answered() {
        let (ours, theirs) = request_pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        let vmm = OnRequest {
            socket: theirs,
            header: Err("its disk is written in place".into()),
        };
        let serve = |answer: Result<String, String>| {
            let vmm = &vmm;
            move || answering(vmm, answer)
        };
        std::thread::scope(|s| {
            let got = s.spawn(serve(Ok(String::new())));
            pause(&ours, true, Duration::from_secs(5)).unwrap();
            assert!(matches!(got.join().unwrap(), Asked::Pause));
            let got = s.spawn(serve(Err("it is not paused".into())));
            let err = pause(&ours, false, Duration::from_secs(5)).unwrap_err();
            assert!(err.to_string().contains("it is not paused"), "{err}");
            assert!(matches!(got.join().unwrap(), Asked::Resume));
        });
        // A VM no snapshot can be taken of says why, and serves on.
        let tmp = tempfile::tempdir().unwrap();
        let target = Target::create(&tmp.path().join("snap"), header(), 0).unwrap();
        let err = request(&ours, &target, Duration::from_millis(50)).unwrap_err();
        assert!(err.to_string().contains("did not answer"), "{err}");
        match vmm.receive().unwrap() {
            Some(Asked::Refused(why)) => assert!(why.contains("written in place"), "{why}"),
            other => panic!("a refused snapshot was expected, not {other:?}"),
        }
        std::thread::scope(|s| {
            s.spawn(serve(Ok(String::new())));
            pause(&ours, true, Duration::from_secs(5)).unwrap();
        });
    }

    #[test]
    fn a_plug_hands_over_the_stream_and_hears_the_device_number() {
        use std::io::Read;
        let (ours, theirs) = request_pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        let vmm = OnRequest {
            socket: theirs,
            header: Err("no image".into()),
        };
        let (vm_end, mut hub_end) = UnixStream::pair().unwrap();
        let mac = [0x02, 0x48, 0x55, 0x53, 0x4b, 0x01];
        let served = |answer: Result<String, String>| {
            let vmm = &vmm;
            move || answering(vmm, answer)
        };
        std::thread::scope(|s| {
            let got = s.spawn(served(Ok("7".into())));
            assert_eq!(
                plug(&ours, mac, "front", &vm_end, Duration::from_secs(5)).unwrap(),
                7
            );
            match got.join().unwrap() {
                Asked::Plug {
                    mac: m,
                    stream,
                    network,
                } => {
                    assert_eq!(m, mac);
                    assert_eq!(network, "front");
                    // The VMM's copy is the VM's end, and never blocks.
                    let mut buf = [0u8; 4];
                    let e = (&stream).read(&mut buf).unwrap_err();
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    (&stream).write_all(b"ping").unwrap();
                    hub_end.read_exact(&mut buf).unwrap();
                    assert_eq!(&buf, b"ping");
                }
                other => panic!("a plug was expected, not {other:?}"),
            }
            let got = s.spawn(served(Err("no empty slot".into())));
            let err = plug(&ours, mac, "", &vm_end, Duration::from_secs(5)).unwrap_err();
            assert!(err.to_string().contains("no empty slot"), "{err}");
            assert!(
                matches!(got.join().unwrap(), Asked::Plug { network, .. } if network.is_empty())
            );
            let got = s.spawn(served(Ok("3".into())));
            assert_eq!(locate(&ours, "back", Duration::from_secs(5)).unwrap(), 3);
            assert!(matches!(got.join().unwrap(), Asked::Locate { network } if network == "back"));
            let got = s.spawn(served(Err("no interface on back".into())));
            let err = locate(&ours, "back", Duration::from_secs(5)).unwrap_err();
            assert!(err.to_string().contains("no interface on back"), "{err}");
            got.join().unwrap();
            let got = s.spawn(served(Ok(String::new())));
            unplug(&ours, 7, Duration::from_secs(5)).unwrap();
            assert!(matches!(got.join().unwrap(), Asked::Unplug { device: 7 }));
            // An answer without a number is not taken for one.
            let got = s.spawn(served(Ok(String::new())));
            let err = plug(&ours, mac, "front", &vm_end, Duration::from_secs(5)).unwrap_err();
            assert!(err.to_string().contains("names no device"), "{err}");
            got.join().unwrap();
        });
        // Malformed: a plug without its socket or with half a MAC, a
        // network's name that is not UTF-8, an unplug with a file.
        let mut msg = PLUG_TAG.to_vec();
        msg.extend_from_slice(&mac);
        ours.send(&msg).unwrap();
        assert_eq!(
            vmm.receive().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut msg = PLUG_TAG.to_vec();
        msg.extend_from_slice(&mac[..3]);
        ours.send_with_fds(&[&msg[..]], &[vm_end.as_raw_fd()])
            .unwrap();
        assert_eq!(
            vmm.receive().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut msg = LOCATE_TAG.to_vec();
        msg.extend_from_slice(&[0xff, 0xfe]);
        ours.send(&msg).unwrap();
        assert_eq!(
            vmm.receive().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut msg = UNPLUG_TAG.to_vec();
        msg.extend_from_slice(&7u32.to_le_bytes());
        ours.send_with_fds(&[&msg[..]], &[vm_end.as_raw_fd()])
            .unwrap();
        assert_eq!(
            vmm.receive().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
