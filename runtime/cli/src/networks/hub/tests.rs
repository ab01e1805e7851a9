use std::time::Duration;

use super::*;

const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

/// One member as a run makes it: its connection to the hub, and its
/// VM's end of the socket pair whose other end went to the hub.
struct Member {
    _control: UnixStream,
    vm: UnixStream,
}

/// A hub on a socket in a temporary folder, serving in a thread until
/// its last member left; the first member is connected before it starts.
fn hub_with(
    first: Hello,
) -> (
    tempfile::TempDir,
    std::thread::JoinHandle<()>,
    Member,
    Reply,
) {
    hub_on(first, |hub| hub)
}

/// [`hub_with`], the hub as `setup` makes it (a host port, IPv6).
fn hub_on(
    first: Hello,
    setup: impl FnOnce(Hub) -> Hub + Send + 'static,
) -> (
    tempfile::TempDir,
    std::thread::JoinHandle<()>,
    Member,
    Reply,
) {
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("hub.sock")).unwrap();
    let control = UnixStream::connect(dir.path().join("hub.sock")).unwrap();
    let range = (
        u32::from(Ipv4Addr::new(10, 89, 0, 2)),
        u32::from(Ipv4Addr::new(10, 89, 0, 4)),
    );
    let hub = std::thread::spawn(move || setup(Hub::new(range)).run(&listener, || true).unwrap());
    let (member, reply) = hello(control, &first);
    (dir, hub, member, reply)
}

fn join(dir: &tempfile::TempDir, h: &Hello) -> (Member, Reply) {
    hello(UnixStream::connect(dir.path().join("hub.sock")).unwrap(), h)
}

/// Sends `h` with the hub's end of a new socket pair, and reads the
/// answer.
fn hello(control: UnixStream, h: &Hello) -> (Member, Reply) {
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let (vm, theirs) = vmm::vsock::seqpacket_pair().unwrap();
    control
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let frame = control_frame(BROADCAST, h.mac, &serde_json::to_vec(h).unwrap());
    let sent = control
        .send_with_fd(&frame[..], theirs.as_raw_fd())
        .unwrap();
    assert_eq!(sent, frame.len());
    drop(theirs);
    let mut control = control;
    let frame = super::super::read_frame(&mut control).unwrap();
    let reply = serde_json::from_slice(payload(&frame).unwrap()).unwrap();
    let vm = UnixStream::from(vm);
    vm.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (
        Member {
            _control: control,
            vm,
        },
        reply,
    )
}

/// The next message on a VM's socket: one frame in the stream framing,
/// returned without its length.
fn read_frame(vm: &UnixStream) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4 + MAX_FRAME + 1];
    let n = (&*vm).read(&mut buf)?;
    assert!(n >= 4, "a {n}-byte message");
    let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
    assert_eq!(len, n - 4, "one frame per message");
    Ok(buf[4..n].to_vec())
}

/// Sends one frame (already in the stream framing) as one message.
fn send(m: &Member, wire: &[u8]) {
    assert_eq!((&m.vm).write(wire).unwrap(), wire.len());
}

fn named(name: &str, mac: [u8; 6]) -> Hello {
    Hello {
        names: vec![name.into()],
        mac,
        want: None,
        fixed: false,
        held: Vec::new(),
    }
}

fn welcome(address: [u8; 4]) -> Reply {
    Reply::Welcome {
        address: address.into(),
    }
}

/// An Ethernet frame from `src` to `dst` with `body`, in the stream framing.
fn frame(dst: [u8; 6], src: [u8; 6], body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&((14 + body.len()) as u32).to_be_bytes());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// The next frame that is not a list of names, and the last list seen
/// before it.
fn next_data(member: &Member) -> (Vec<u8>, Option<NetworkHosts>) {
    let mut names = None;
    loop {
        let f = read_frame(&member.vm).unwrap();
        match payload(&f) {
            Some(p) => names = Some(serde_json::from_slice(p).unwrap()),
            None => return (f, names),
        }
    }
}

/// The next list of `n` members' names (earlier lists skipped).
fn names_of(member: &Member, n: usize) -> NetworkHosts {
    loop {
        let f = read_frame(&member.vm).unwrap();
        if let Some(p) = payload(&f) {
            let hosts: NetworkHosts = serde_json::from_slice(p).unwrap();
            if hosts.hosts.len() == n {
                return hosts;
            }
        }
    }
}

fn listed(hosts: &NetworkHosts) -> Vec<String> {
    hosts
        .hosts
        .iter()
        .map(|h| format!("{} {}", h.address, h.names.join(",")))
        .collect()
}

/// On a network with IPv6, the names each member is sent carry every
/// member's IPv6 address too.
#[test]
fn with_ipv6_the_names_carry_each_member_s_ipv6_address() {
    let v6 = |a: Ipv4Addr| {
        Some(std::net::Ipv6Addr::from(
            0xfd00_u128 << 112 | u128::from(a.octets()[3]),
        ))
    };
    let (dir, hub, a, _) = hub_on(named("db", A), move |hub| hub.with_ipv6(v6));
    let (b, _) = join(&dir, &named("web", B));
    let hosts = names_of(&a, 2);
    let got: Vec<String> = hosts
        .hosts
        .iter()
        .map(|h| format!("{} {:?}", h.address, h.address6))
        .collect();
    assert_eq!(got, ["10.89.0.2 Some(fd00::2)", "10.89.0.3 Some(fd00::3)"]);
    assert!(hosts.lines().contains("fd00::3\tweb\n"));
    drop((a, b));
    hub.join().unwrap();
    drop(dir);
}

#[test]
fn members_get_addresses_and_each_other_s_frames_by_mac() {
    let (dir, hub, a, reply) = hub_with(named("db", A));
    assert_eq!(reply, welcome([10, 89, 0, 2]));
    let (b, reply) = join(
        &dir,
        &Hello {
            names: vec!["web".into(), "www".into()],
            mac: B,
            want: Some([10, 89, 0, 4].into()),
            fixed: false,
            held: Vec::new(),
        },
    );
    assert_eq!(reply, welcome([10, 89, 0, 4]), "the address it asked for");
    assert_eq!(
        listed(&names_of(&a, 2)),
        ["10.89.0.2 db", "10.89.0.4 web,www"],
        "a member learns of the one that joined"
    );

    // Unicast to B, to a MAC nobody has (dropped), broadcast.
    send(&a, &frame(B, A, b"to b"));
    send(&a, &frame([2, 9, 9, 9, 9, 9], A, b"to nobody"));
    send(&a, &frame(BROADCAST, A, b"to all"));
    let (got, _) = next_data(&b);
    assert_eq!(&got[14..], b"to b");
    let (got, _) = next_data(&b);
    assert_eq!(&got[14..], b"to all", "the frame for nobody went nowhere");
    // A message whose length is not its own is dropped, and the member
    // goes on.
    let mut lying = frame(B, A, b"lies");
    lying[3] += 1;
    send(&a, &lying);
    send(&a, &frame(B, A, b"true"));
    let (got, _) = next_data(&b);
    assert_eq!(&got[14..], b"true");
    send(&b, &frame(A, B, b"to a"));
    let (got, _) = next_data(&a);
    assert_eq!(&got[14..], b"to a", "A's own broadcast did not come back");

    // A guest's question for the names goes to the hub only.
    send(&b, &control_frame(BROADCAST, B, b"names?"));
    assert_eq!(listed(&names_of(&b, 2)).len(), 2);
    send(&b, &frame(A, B, b"after"));
    let (got, names) = next_data(&a);
    assert_eq!(&got[14..], b"after");
    assert!(names.is_none(), "B's question never reached A");

    // What a member sent just before it left still goes out.
    send(&b, &frame(A, B, b"last words"));
    drop(b);
    let (got, _) = next_data(&a);
    assert_eq!(&got[14..], b"last words");
    assert_eq!(listed(&names_of(&a, 1)), ["10.89.0.2 db"], "B left");
    drop(a);
    hub.join().unwrap();
    drop(dir);
}

#[test]
fn hellos_that_cannot_be_members_are_refused_and_the_subnet_runs_out() {
    let (dir, hub, _a, _) = hub_with(named("a", A));
    let refused = |r: Reply| matches!(r, Reply::Refused { .. });
    assert!(refused(join(&dir, &named("b", A)).1), "a MAC in use");
    assert!(refused(join(&dir, &named("two words", B)).1));
    assert!(
        refused(join(&dir, &named("b", [3, 0, 0, 0, 0, 1])).1),
        "multicast MAC"
    );
    let many = Hello {
        names: (0..17).map(|n| format!("n{n}")).collect(),
        ..named("b", B)
    };
    assert!(refused(join(&dir, &many).1));
    let mut raw = UnixStream::connect(dir.path().join("hub.sock")).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(&frame(BROADCAST, B, b"not a hello")).unwrap();
    let reply: Reply =
        serde_json::from_slice(payload(&super::super::read_frame(&mut raw).unwrap()).unwrap())
            .unwrap();
    assert!(refused(reply));
    let mut buf = [0u8; 1];
    assert_eq!(raw.read(&mut buf).unwrap(), 0, "a refused member is let go");
    // A hello without the VM's socket: an older husk's.
    let mut bare = UnixStream::connect(dir.path().join("hub.sock")).unwrap();
    bare.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let h = named("b", B);
    bare.write_all(&control_frame(
        BROADCAST,
        B,
        &serde_json::to_vec(&h).unwrap(),
    ))
    .unwrap();
    match serde_json::from_slice(payload(&super::super::read_frame(&mut bare).unwrap()).unwrap())
        .unwrap()
    {
        Reply::Refused { reason } => assert!(reason.contains("hands over its socket"), "{reason}"),
        other => panic!("{other:?}"),
    }

    let (_b, reply) = join(&dir, &named("b", B));
    assert_eq!(reply, welcome([10, 89, 0, 3]));
    let (_c, reply) = join(&dir, &named("c", [2, 0, 0, 0, 0, 0xc]));
    assert_eq!(reply, welcome([10, 89, 0, 4]));
    let (_d, reply) = join(&dir, &named("d", [2, 0, 0, 0, 0, 0xd]));
    assert!(refused(reply), "the range holds three");

    let mut long = UnixStream::connect(dir.path().join("hub.sock")).unwrap();
    long.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    long.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
        .unwrap();
    assert_eq!(
        long.read(&mut buf).unwrap_or(0),
        0,
        "a frame too long ends it"
    );
    drop((_a, _b, _c, _d));
    hub.join().unwrap();
}

#[test]
fn a_member_that_never_reads_loses_frames_and_holds_up_no_other() {
    let (dir, hub, a, _) = hub_with(named("a", A));
    let (b, _) = join(&dir, &named("b", B));
    let c_mac = [2, 0, 0, 0, 0, 0xc];
    let (c, _) = join(&dir, &named("c", c_mac));
    // C reads everything, in a thread of its own, and says how far it
    // got; B reads nothing.
    let (progress, got) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut broadcasts = 0;
        loop {
            let (f, _) = next_data(&c);
            match &f[14..] {
                b"to c" => return (broadcasts, c),
                _ => broadcasts += 1,
            }
            let _ = progress.send(broadcasts);
        }
    });
    // Far more than the hub holds for a member (MAX_QUEUED) and the
    // socket's own buffer together, never more than 16 frames ahead of C
    // (so only B's queue fills, however C's thread is scheduled).
    let body = vec![0x55u8; 60_000];
    let sent = 2 * MAX_QUEUED / body.len();
    let mut seen = 0;
    for i in 0..sent {
        while seen + 16 < i {
            seen = got.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        send(&a, &frame(BROADCAST, A, &body));
    }
    // A runt (shorter than an Ethernet header) goes nowhere.
    let mut runt = 12u32.to_be_bytes().to_vec();
    runt.extend_from_slice(&[0u8; 12]);
    send(&a, &runt);
    send(&a, &frame(c_mac, A, b"to c"));
    let (broadcasts, c) = reader.join().unwrap();
    assert_eq!(broadcasts, sent, "C got every broadcast and no runt");

    // B finds what the hub kept for it: less than it was sent.
    b.vm.set_nonblocking(true).unwrap();
    let (mut kept, mut buf) = (0, vec![0u8; 1 << 16]);
    loop {
        match (&b.vm).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => kept += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The hub may still be writing its queue out.
                std::thread::sleep(Duration::from_millis(50));
                match (&b.vm).read(&mut buf) {
                    Ok(n) if n > 0 => kept += n,
                    _ => break,
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        kept > 0 && kept < sent * body.len() && kept <= MAX_QUEUED + (2 << 20),
        "B kept {kept} bytes of {}",
        sent * body.len()
    );
    drop((a, b, c));
    hub.join().unwrap();
}

#[test]
fn a_fixed_address_is_given_or_refused_never_another() {
    let (dir, hub, _a, reply) = hub_with(named("a", A));
    assert_eq!(reply, welcome([10, 89, 0, 2]));
    let fixed = |name: &str, mac: [u8; 6], want: [u8; 4]| Hello {
        want: Some(want.into()),
        fixed: true,
        ..named(name, mac)
    };
    let reason = |r: Reply| match r {
        Reply::Refused { reason } => reason,
        other => panic!("not refused: {other:?}"),
    };
    assert_eq!(
        reason(join(&dir, &fixed("b", B, [10, 89, 0, 2])).1),
        "10.89.0.2 is taken by another member (a)"
    );
    for outside in [[10, 89, 0, 1], [10, 89, 0, 5], [192, 0, 2, 3]] {
        assert!(
            reason(join(&dir, &fixed("b", B, outside)).1).contains("not an address it gives"),
            "{outside:?}"
        );
    }
    let (_b, reply) = join(&dir, &fixed("b", B, [10, 89, 0, 4]));
    assert_eq!(reply, welcome([10, 89, 0, 4]));
    // An address only wished for falls back to a free one.
    let wish = Hello {
        want: Some([10, 89, 0, 4].into()),
        ..named("c", [2, 0, 0, 0, 0, 0xc])
    };
    let (_c, reply) = join(&dir, &wish);
    assert_eq!(reply, welcome([10, 89, 0, 3]));
    drop((_a, _b, _c));
    hub.join().unwrap();
}

#[test]
fn an_address_a_living_member_holds_goes_to_no_other_mac() {
    // The hub is new (the last one died); A's husk lives and holds
    // 10.89.0.2 but has not joined this hub yet; B joins first.
    let held = vec![Held {
        mac: A,
        address: [10, 89, 0, 2].into(),
    }];
    let (dir, hub, b, reply) = hub_with(Hello {
        held: held.clone(),
        ..named("b", B)
    });
    assert_eq!(reply, welcome([10, 89, 0, 3]), "B must not get A's address");
    let reason = |r: Reply| match r {
        Reply::Refused { reason } => reason,
        other => panic!("not refused: {other:?}"),
    };
    // `--ip 10.89.0.2`, with the living leases.
    let at_a_s = |name: &str, mac: [u8; 6]| Hello {
        want: Some([10, 89, 0, 2].into()),
        fixed: true,
        held: held.clone(),
        ..named(name, mac)
    };
    let c = [2, 0, 0, 0, 0, 0xc];
    assert_eq!(
        reason(join(&dir, &at_a_s("c", c)).1),
        "10.89.0.2 is held by another member, joining the network again"
    );
    // A comes back to it.
    let (a, reply) = join(&dir, &at_a_s("a", A));
    assert_eq!(reply, welcome([10, 89, 0, 2]));
    // Once A's husk is gone its lease is no more, and a joiner's list
    // (empty) frees what it held: C gets the last address.
    names_of(&b, 2);
    drop(a);
    names_of(&b, 1);
    let (_c, reply) = join(&dir, &named("c", c));
    assert_eq!(reply, welcome([10, 89, 0, 2]));
    drop((b, _c));
    hub.join().unwrap();
}

#[test]
fn the_host_s_port_gets_the_frames_for_its_mac_and_broadcasts_and_is_no_member() {
    let host_mac = [2, 0, 0, 0, 0, 0x11];
    // A SOCK_SEQPACKET pair stands in for the tap: read(2) and write(2)
    // take a whole frame each, as on a tap.
    let (tap, host) = vmm::vsock::seqpacket_pair().unwrap();
    let host = UnixStream::from(host);
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = HostPort::new(File::from(tap), host_mac).unwrap();
    let (_dir, hub, a, reply) = hub_on(named("a", A), move |hub| hub.with_host(port));
    assert_eq!(reply, welcome([10, 89, 0, 2]));
    // The host's broadcast (an ARP request) reaches the member, framed.
    let raw = |f: Vec<u8>| f[4..].to_vec();
    (&host)
        .write_all(&raw(frame(BROADCAST, host_mac, b"who-has")))
        .unwrap();
    let (got, _) = next_data(&a);
    assert_eq!(got, raw(frame(BROADCAST, host_mac, b"who-has")));
    // The member's frame for a MAC nobody has goes nowhere; its frame for
    // the host's reaches the tap whole, without the framing's length.
    send(&a, &frame([2, 9, 9, 9, 9, 9], A, b"lost"));
    send(&a, &frame(host_mac, A, b"is-at"));
    let mut buf = vec![0u8; 70_000];
    let n = (&host).read(&mut buf).unwrap();
    assert_eq!(&buf[..n], &raw(frame(host_mac, A, b"is-at"))[..]);
    // The host cannot speak for the hub: a names frame from it is dropped,
    // what it sends after reaches the member.
    (&host)
        .write_all(&control_frame(BROADCAST, host_mac, b"{}")[4..])
        .unwrap();
    (&host)
        .write_all(&raw(frame(A, host_mac, b"reply")))
        .unwrap();
    assert_eq!(next_data(&a).0, raw(frame(A, host_mac, b"reply")));
    // The hub leaves with its last member, the host's port or not.
    drop(a);
    hub.join().unwrap();
    assert_eq!(
        (&host).read(&mut buf).unwrap(),
        0,
        "the tap went with the hub"
    );
}

#[test]
fn a_host_port_that_closes_is_dropped_and_the_members_go_on() {
    let (tap, host) = vmm::vsock::seqpacket_pair().unwrap();
    let port = HostPort::new(File::from(tap), [2, 0, 0, 0, 0, 0x11]).unwrap();
    let (dir, hub, a, reply) = hub_on(named("a", A), move |hub| hub.with_host(port));
    assert_eq!(reply, welcome([10, 89, 0, 2]));
    // Its end reads as closed from now on: the hub lets the port go (it
    // would spin on it otherwise) and still switches between members.
    drop(host);
    let (b, reply) = join(&dir, &named("b", B));
    assert_eq!(reply, welcome([10, 89, 0, 3]));
    send(&a, &frame(B, A, b"still here"));
    assert_eq!(next_data(&b).0, frame(B, A, b"still here")[4..]);
    drop((a, b));
    hub.join().unwrap();
}
