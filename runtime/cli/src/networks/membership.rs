//! A VM's place on a network, kept while the VM runs: should the
//! network's hub go away (killed, crashed), the husk that joined joins the
//! next hub (starting one, as a first joiner does) with the same hello and
//! hands it the same socket, so the guest's interface goes on with its
//! address and MAC, having lost only the frames the old hub held.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::hub::{pollfd, Hello};
use super::{Lease, Network};

/// How long a member tries to reach a new hub before it gives up.
const REJOIN_TRIES: u32 = 50;
const REJOIN_PAUSE: Duration = Duration::from_millis(100);

pub struct Membership {
    network: Network,
    /// The hello it joined with, its address now fixed: the next hub
    /// gives it that one or refuses it, never another.
    hello: Hello,
    /// Its connection to the hub: hung up when the hub goes.
    control: UnixStream,
    /// A copy of the hub's end of the VM's socket pair; its peer (the
    /// VM's end) hangs up when the VM ends.
    member: OwnedFd,
    /// Its address, held while this husk lives: a run joining before it
    /// is back on the next hub is given another.
    lease: Lease,
}

/// Says when a kept membership let its network go: once its VM's end of
/// the socket closed (every copy: the VMM's, and the one a jail's
/// supervisor holds until it lets its VM's configuration go).
pub struct Left(Option<mpsc::Receiver<()>>);

impl Left {
    /// Waits until `deadline` for the membership to end; past it, its
    /// lease goes with this process (and the next joiner removes it).
    pub fn wait(self, deadline: Instant) {
        if let Some(left) = self.0 {
            let _ = left.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        }
    }
}

/// What ended a wait.
#[derive(Debug, PartialEq)]
enum Gone {
    Vm,
    Hub,
}

impl Membership {
    pub(super) fn new(
        network: Network,
        hello: &Hello,
        address: Ipv4Addr,
        control: UnixStream,
        member: OwnedFd,
        lease: Lease,
    ) -> Self {
        Membership {
            network,
            hello: Hello {
                want: Some(address),
                fixed: true,
                ..hello.clone()
            },
            control,
            member,
            lease,
        }
    }

    /// Keeps the VM on its network from a thread of its own until the
    /// VM's end of its socket closes, then gives its address up. Start it
    /// where the VM's husk stays (after the jail's fork: threads do not
    /// cross it).
    pub fn keep(self) -> Left {
        let name = self.network.name.clone();
        let (done, left) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("husk-network".into())
            .spawn(move || {
                self.run();
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => Left(Some(left)),
            Err(e) => {
                eprintln!("husk: network {name}: cannot watch its hub ({e}); should it go, this VM's interface on it is down");
                Left(None)
            }
        }
    }

    fn run(mut self) {
        let name = self.network.name.clone();
        while self.wait() == Gone::Hub {
            match self.rejoin() {
                Ok(Some(address)) => {
                    eprintln!("husk: network {name}: its hub went away; joined its next one, at {address} again")
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!(
                        "husk: network {name}: its hub went away and no other took this VM ({e:#}); its interface on {name} is down"
                    );
                    break;
                }
            }
        }
        self.lease.release();
    }

    /// Waits until the hub or the VM goes.
    fn wait(&mut self) -> Gone {
        loop {
            let mut fds = [
                pollfd(&self.control, libc::POLLIN),
                // Only hang-ups: what is waiting on it is the hub's to read.
                pollfd(&self.member, 0),
            ];
            // SAFETY: two pollfds we own, alive for the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // Nothing here can be waited on: watch no more.
                return Gone::Vm;
            }
            if fds[1].revents != 0 {
                return Gone::Vm;
            }
            if fds[0].revents != 0 {
                // The hub writes nothing here after its welcome: what
                // reads is its end closing.
                let mut buf = [0u8; 256];
                match std::io::Read::read(&mut self.control, &mut buf) {
                    Ok(n) if n > 0 => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    _ => return Gone::Hub,
                }
            }
        }
    }

    /// Whether the VM's end of its socket closed.
    fn vm_gone(&self) -> bool {
        let mut fd = pollfd(&self.member, 0);
        // SAFETY: one pollfd we own, for the call; no waiting.
        unsafe { libc::poll(&mut fd, 1, 0) != 0 }
    }

    /// Joins the network's next hub: the address it has again, or `None`
    /// when the VM ended meanwhile.
    fn rejoin(&mut self) -> anyhow::Result<Option<Ipv4Addr>> {
        let mut tries = 0;
        loop {
            if self.vm_gone() {
                return Ok(None);
            }
            match self.network.reach_hub(&self.hello, &self.member) {
                Ok(Ok((control, address))) => {
                    self.control = control;
                    return Ok(Some(address));
                }
                Ok(Err(refused)) => anyhow::bail!("refused: {refused}"),
                Err(e) if tries + 1 >= REJOIN_TRIES => return Err(e),
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(REJOIN_PAUSE);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;

    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    use super::super::hub::{control_frame, payload, Reply, HUB_MAC};
    use super::*;

    /// A stand-in for a hub: takes one member's hello and socket and
    /// welcomes it at `address`; dropping what it returns is the hub
    /// dying.
    fn stand_in_hub(listener: &UnixListener, address: [u8; 4]) -> (UnixStream, UnixStream, Hello) {
        let (control, _) = listener.accept().unwrap();
        control
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, socket) = control.recv_with_fd(&mut buf).unwrap();
        let hello: Hello = serde_json::from_slice(payload(&buf[4..n]).unwrap()).unwrap();
        let reply = Reply::Welcome {
            address: address.into(),
        };
        (&control)
            .write_all(&control_frame(
                hello.mac,
                HUB_MAC,
                &serde_json::to_vec(&reply).unwrap(),
            ))
            .unwrap();
        let data = UnixStream::from(OwnedFd::from(socket.expect("the member's socket")));
        (control, data, hello)
    }

    fn message(s: &UnixStream) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 1 << 17];
        let n = (&*s).read(&mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn a_member_joins_the_next_hub_with_its_address_and_socket_and_leaves_with_its_vm() {
        let tmp = tempfile::tempdir().unwrap();
        let network = Network::at(tmp.path(), "lan");
        network
            .create(Some(([10, 90, 0, 0].into(), 24)), false, None, true)
            .unwrap();
        let socket = network.dir.join(super::super::SOCKET);
        let listener = UnixListener::bind(&socket).unwrap();
        let hello = Hello {
            names: vec!["web".into()],
            mac: [2, 0, 0, 0, 0, 7],
            want: None,
            fixed: false,
            held: Vec::new(),
        };
        let joining = std::thread::scope(|s| {
            let hub = s.spawn(|| stand_in_hub(&listener, [10, 90, 0, 5]));
            let joined = network.join(&hello).unwrap();
            (joined, hub.join().unwrap())
        });
        let (joined, (control, data, seen)) = joining;
        assert_eq!(joined.address, Ipv4Addr::new(10, 90, 0, 5));
        assert_eq!(
            (seen.want, seen.fixed),
            (None, false),
            "the first hello as asked"
        );
        let vm = UnixStream::from(joined.socket);
        // A frame from the VM reaches the hub as one message.
        (&vm).write_all(b"\0\0\0\x02hi").unwrap();
        assert_eq!(message(&data), b"\0\0\0\x02hi");
        // Its lease holds the address while this process lives.
        let leases = network.dir.join(super::super::MEMBERS);
        let lease = leases.join(format!("10.90.0.5-{}", std::process::id()));
        assert!(lease.is_file());
        let left = joined.membership.keep();

        // The hub dies; the next one is on a new socket at the same path
        // before the member notices, and gets the same hello (its address
        // now fixed) and the same socket, with the frame the VM sent
        // meanwhile.
        drop(listener);
        std::fs::remove_file(&socket).unwrap();
        let listener = UnixListener::bind(&socket).unwrap();
        (&vm).write_all(b"\0\0\0\x02yo").unwrap();
        drop((control, data));
        let (control, data, seen) = stand_in_hub(&listener, [10, 90, 0, 5]);
        assert_eq!(seen.want, Some(Ipv4Addr::new(10, 90, 0, 5)));
        assert!(seen.fixed && seen.names == ["web"] && seen.mac == hello.mac);
        // It read its own lease, as every joiner reads the living ones.
        assert_eq!(
            seen.held,
            [super::super::hub::Held {
                mac: hello.mac,
                address: [10, 90, 0, 5].into()
            }]
        );
        assert_eq!(message(&data), b"\0\0\0\x02yo");
        (&data).write_all(b"\0\0\0\x03new").unwrap();
        assert_eq!(message(&vm), b"\0\0\0\x03new");

        // The VM ends: the member lets go of its connection and its copy
        // of the socket.
        drop(vm);
        control
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!((&control).read(&mut [0u8; 16]).unwrap(), 0);
        let mut fd = libc::pollfd {
            fd: data.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: one pollfd we own, for the call.
        let n = unsafe { libc::poll(&mut fd, 1, 10_000) };
        assert_eq!(n, 1, "the hub's end sees the VM's close");
        // And gives its address up.
        left.wait(Instant::now() + Duration::from_secs(10));
        assert!(!lease.exists(), "the lease outlived its member");
    }

    #[test]
    fn joiners_tell_the_hub_the_living_members_leases_and_remove_the_dead_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let network = Network::at(tmp.path(), "lan");
        network
            .create(Some(([10, 90, 0, 0].into(), 24)), false, None, true)
            .unwrap();
        let living = network
            .lease([2, 0, 0, 0, 0, 1], [10, 90, 0, 2].into())
            .unwrap();
        // A killed husk's lease: the file, its lock gone with it.
        let dir = network.dir.join(super::super::MEMBERS);
        let dead = dir.join("10.90.0.3-999999");
        std::fs::write(&dead, br#"{"mac":[2,0,0,0,0,2],"address":"10.90.0.3"}"#).unwrap();
        // A living one's file that is not a lease is passed over.
        let odd = network
            .lease([2, 0, 0, 0, 0, 3], [10, 90, 0, 4].into())
            .unwrap();
        std::fs::write(dir.join(format!("10.90.0.4-{}", std::process::id())), b"x").unwrap();
        assert_eq!(
            network.held(),
            [super::super::hub::Held {
                mac: [2, 0, 0, 0, 0, 1],
                address: [10, 90, 0, 2].into()
            }]
        );
        assert!(!dead.exists(), "a dead member's lease is removed");
        // A lease given up, or whose process ended, holds nothing.
        living.release();
        drop(odd);
        assert_eq!(network.held(), []);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }
}
