use super::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

/// A request as a server reads it: its header fields and options.
struct Sent {
    xid: u32,
    flags: u16,
    ciaddr: Ipv4Addr,
    chaddr: [u8; 6],
    len: usize,
    options: Options,
}

fn read_request(packet: &[u8]) -> Sent {
    assert_eq!(packet[0], BOOTREQUEST);
    assert_eq!(packet[HEADER..HEADER + 4], COOKIE);
    Sent {
        xid: u32::from_be_bytes(packet[4..8].try_into().unwrap()),
        flags: u16::from_be_bytes([packet[10], packet[11]]),
        ciaddr: addr(&packet[12..16]),
        chaddr: packet[28..34].try_into().unwrap(),
        len: packet.len(),
        options: Options::parse(&packet[HEADER + 4..]).unwrap(),
    }
}

/// The one packet in `actions`, where it goes and as a server reads it.
fn sent(actions: &[Action]) -> (Destination, Sent) {
    match actions {
        [Action::Send { to, packet }] => (*to, read_request(packet)),
        other => panic!("expected one packet sent, got {other:?}"),
    }
}

/// A server's reply to `xid` with these options (the message type first).
fn reply(kind: u8, xid: u32, yiaddr: Ipv4Addr, options: &[(u8, &[u8])]) -> Vec<u8> {
    let mut m = vec![BOOTREPLY, HTYPE_ETHERNET, 6, 0];
    m.extend(xid.to_be_bytes());
    m.resize(16, 0);
    m.extend(yiaddr.octets());
    m.extend(SERVER.octets()); // siaddr
    m.resize(28, 0);
    m.extend(MAC);
    m.resize(HEADER, 0);
    m.extend(COOKIE);
    option(&mut m, OPT_MESSAGE_TYPE, &[kind]);
    for (code, data) in options {
        option(&mut m, *code, data);
    }
    m.push(OPT_END);
    m
}

/// The options QEMU's user network gives, and a search list compressed
/// as DNS names are: `corp.example` and `lab.corp.example` pointing back.
fn full_options() -> Vec<(u8, Vec<u8>)> {
    let search = [
        &[4, b'c', b'o', b'r', b'p', 7][..],
        b"example",
        &[0, 3, b'l', b'a', b'b', 0xc0, 0],
    ]
    .concat();
    vec![
        (OPT_SERVER_ID, SERVER.octets().to_vec()),
        (OPT_SUBNET_MASK, vec![255, 255, 255, 0]),
        (OPT_ROUTER, SERVER.octets().to_vec()),
        (OPT_DNS, vec![10, 0, 2, 3, 1, 1, 1, 1]),
        (OPT_DOMAIN_NAME, b"ignored.example".to_vec()),
        (OPT_DOMAIN_SEARCH, search),
        (OPT_MTU, 1400u16.to_be_bytes().to_vec()),
        (OPT_LEASE_TIME, 3600u32.to_be_bytes().to_vec()),
    ]
}

fn with(options: &[(u8, Vec<u8>)]) -> Vec<(u8, &[u8])> {
    options.iter().map(|(c, d)| (*c, &d[..])).collect()
}

/// A client bound to ADDRESS by a server giving `options`, and its lease.
fn bound(options: &[(u8, Vec<u8>)], t0: Instant) -> (Client, Lease) {
    let mut c = Client::new(MAC, Some("web"), 7, t0);
    let (_, discover) = sent(&c.poll(t0));
    let offer = reply(DHCPOFFER, discover.xid, ADDRESS, &with(options));
    let (_, request) = sent(&c.receive(&offer, t0).unwrap());
    let ack = reply(DHCPACK, request.xid, ADDRESS, &with(options));
    match &c.receive(&ack, t0).unwrap()[..] {
        [Action::Bind {
            lease,
            previous: None,
        }] => {
            let lease = lease.clone();
            (c, lease)
        }
        other => panic!("expected a bind, got {other:?}"),
    }
}

#[test]
fn discover_offer_request_ack_binds_what_the_server_gave() {
    let t0 = Instant::now();
    let mut c = Client::new(MAC, Some("web"), 7, t0);
    assert_eq!(c.deadline(), Some(t0), "the first DISCOVER is due at once");
    let (to, d) = sent(&c.poll(t0));
    assert_eq!(to, Destination::Broadcast);
    assert_eq!(d.flags, FLAG_BROADCAST, "no address yet: replies broadcast");
    assert_eq!(d.chaddr, MAC);
    assert_eq!(d.ciaddr, Ipv4Addr::UNSPECIFIED);
    assert!(d.len >= MIN_MESSAGE, "{} bytes", d.len);
    assert_eq!(d.options.get(OPT_MESSAGE_TYPE), Some(&[DHCPDISCOVER][..]));
    assert_eq!(d.options.get(OPT_HOSTNAME), Some(&b"web"[..]));
    assert_eq!(
        d.options.get(OPT_CLIENT_ID),
        Some(&[&[1][..], &MAC[..]].concat()[..])
    );
    let asked = d.options.get(OPT_PARAMETERS).unwrap();
    for code in [OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_CLASSLESS_ROUTES] {
        assert!(asked.contains(&code), "asks for option {code}");
    }
    assert_eq!(c.poll(t0), vec![], "nothing more is due yet");

    let options = full_options();
    let offer = reply(DHCPOFFER, d.xid, ADDRESS, &with(&options));
    let (to, r) = sent(&c.receive(&offer, t0).unwrap());
    assert_eq!(to, Destination::Broadcast, "the REQUEST tells every server");
    assert_eq!(r.xid, d.xid, "one transaction");
    assert_eq!(r.options.get(OPT_MESSAGE_TYPE), Some(&[DHCPREQUEST][..]));
    assert_eq!(
        r.options.get(OPT_REQUESTED_ADDRESS),
        Some(&ADDRESS.octets()[..])
    );
    assert_eq!(r.options.get(OPT_SERVER_ID), Some(&SERVER.octets()[..]));
    assert_eq!(r.ciaddr, Ipv4Addr::UNSPECIFIED);

    let ack = reply(DHCPACK, r.xid, ADDRESS, &with(&options));
    let actions = c.receive(&ack, t0).unwrap();
    let [Action::Bind {
        lease,
        previous: None,
    }] = &actions[..]
    else {
        panic!("{actions:?}")
    };
    assert_eq!(lease.address, ADDRESS);
    assert_eq!(lease.prefix, 24);
    assert_eq!(lease.server, SERVER);
    assert_eq!(
        lease.routes,
        vec![Route {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            gateway: SERVER
        }]
    );
    assert_eq!(
        lease.dns,
        vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]
    );
    assert_eq!(
        lease.search,
        vec!["corp.example", "lab.corp.example"],
        "option 119 wins over option 15"
    );
    assert_eq!(lease.mtu, Some(1400));
    assert_eq!(lease.duration, Some(Duration::from_secs(3600)));
    assert_eq!(lease.renew, Duration::from_secs(1800), "T1: half the lease");
    assert_eq!(lease.rebind, Duration::from_secs(3150), "T2: 7/8 of it");
    assert_eq!(c.lease(), Some(lease));
    assert_eq!(c.deadline(), Some(t0 + Duration::from_secs(1800)));
    assert_eq!(c.receive(&ack, t0).unwrap(), vec![], "a repeated ACK");
}

#[test]
fn a_lease_is_renewed_with_its_server_then_rebound_with_any_then_given_up() {
    let t0 = Instant::now();
    let (mut c, lease) = bound(&full_options(), t0);
    let t1 = t0 + lease.renew;
    assert_eq!(c.poll(t1 - Duration::from_secs(1)), vec![]);
    let (to, r) = sent(&c.poll(t1));
    assert_eq!(to, Destination::Server(SERVER), "renewing: unicast");
    assert_eq!(r.ciaddr, ADDRESS);
    assert_eq!(r.flags, 0, "the reply can come to the address held");
    assert_eq!(r.options.get(OPT_REQUESTED_ADDRESS), None);
    assert_eq!(r.options.get(OPT_SERVER_ID), None);
    // No answer: the next REQUEST half way to T2 (here 675 s away).
    let t2 = t0 + lease.rebind;
    let next = c.deadline().unwrap();
    assert_eq!(next, t1 + (t2 - t1) / 2);
    let (to, again) = sent(&c.poll(next));
    assert_eq!(to, Destination::Server(SERVER));
    assert_eq!(again.xid, r.xid, "the same transaction");
    // Retries keep at least a minute apart, and stop at T2.
    let mut now = next;
    while c.deadline().unwrap() < t2 {
        let due = c.deadline().unwrap();
        assert!(due - now >= MIN_RENEW_RETRY || due == t2, "{:?}", due - now);
        now = due;
        c.poll(now);
    }
    assert_eq!(c.deadline(), Some(t2));
    let (to, rebind) = sent(&c.poll(t2));
    assert_eq!(to, Destination::Broadcast, "rebinding: any server");
    assert_eq!(rebind.ciaddr, ADDRESS);
    assert_eq!(c.lease(), Some(&lease), "still held until it ends");
    // Nobody answers: at the end of the lease the address goes.
    let end = t0 + lease.duration.unwrap();
    let mut actions = Vec::new();
    let mut now = t2;
    while actions.is_empty() || matches!(actions[..], [Action::Send { .. }]) {
        now = c.deadline().unwrap();
        assert!(now <= end);
        actions = c.poll(now);
    }
    assert_eq!(now, end);
    let [Action::Unbind { lease: gone, why }] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(gone, &lease);
    assert!(why.contains("ran out"), "{why}");
    assert_eq!(c.lease(), None);
    // Then DISCOVER again, a second later, in a new transaction.
    assert_eq!(c.deadline(), Some(end + Duration::from_secs(1)));
    let (to, d) = sent(&c.poll(end + Duration::from_secs(1)));
    assert_eq!(to, Destination::Broadcast);
    assert_eq!(d.options.get(OPT_MESSAGE_TYPE), Some(&[DHCPDISCOVER][..]));
    assert_ne!(d.xid, r.xid);
}

#[test]
fn a_renewal_ack_replaces_the_lease_and_names_the_one_it_replaces() {
    let t0 = Instant::now();
    let (mut c, lease) = bound(&full_options(), t0);
    let t1 = t0 + lease.renew;
    let (_, r) = sent(&c.poll(t1));
    let mut options = full_options();
    options.retain(|(code, _)| *code != OPT_DNS);
    options.push((OPT_DNS, vec![9, 9, 9, 9]));
    let ack = reply(DHCPACK, r.xid, ADDRESS, &with(&options));
    let actions = c.receive(&ack, t1).unwrap();
    let [Action::Bind {
        lease: new,
        previous: Some(old),
    }] = &actions[..]
    else {
        panic!("{actions:?}")
    };
    assert_eq!(old, &lease);
    assert_eq!(new.dns, vec![Ipv4Addr::new(9, 9, 9, 9)]);
    assert!(new.same_interface(old), "only the resolver changed");
    assert_eq!(
        c.deadline(),
        Some(t1 + new.renew),
        "timers from the renewal"
    );
}

#[test]
fn a_nak_while_renewing_drops_the_address_and_starts_over() {
    let t0 = Instant::now();
    let (mut c, lease) = bound(&full_options(), t0);
    let t1 = t0 + lease.renew;
    let (_, r) = sent(&c.poll(t1));
    let nak = reply(
        DHCPNAK,
        r.xid,
        Ipv4Addr::UNSPECIFIED,
        &[
            (OPT_SERVER_ID, &SERVER.octets()),
            (OPT_MESSAGE, b"wrong network"),
        ],
    );
    let actions = c.receive(&nak, t1).unwrap();
    let [Action::Refused { server, why }, Action::Unbind { lease: gone, .. }] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(*server, Some(SERVER));
    assert_eq!(why, "wrong network");
    assert_eq!(gone, &lease);
    assert_eq!(c.lease(), None);
    assert_eq!(c.poll(t1), vec![], "no DISCOVER at once after a NAK");
    let (_, d) = sent(&c.poll(t1 + Duration::from_secs(1)));
    assert_eq!(d.options.get(OPT_MESSAGE_TYPE), Some(&[DHCPDISCOVER][..]));
}

#[test]
fn unanswered_requests_back_off_to_a_minute_and_an_offer_not_confirmed_is_given_up() {
    let t0 = Instant::now();
    let mut c = Client::new(MAC, None, 99, t0);
    let mut now = t0;
    let mut gaps = Vec::new();
    for _ in 0..10 {
        let (_, d) = sent(&c.poll(now));
        assert_eq!(d.options.get(OPT_HOSTNAME), None, "no hostname to send");
        let next = c.deadline().unwrap();
        gaps.push((next - now).as_secs_f64());
        now = next;
    }
    let want = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 64.0, 64.0, 64.0];
    for (gap, want) in gaps.iter().zip(want) {
        assert!(
            (gap - want).abs() <= want / 16.0 + 1e-9,
            "gaps {gaps:?}, want about {want}"
        );
    }
    assert!(
        gaps[6..].windows(2).any(|w| w[0] != w[1]),
        "jittered: {gaps:?}"
    );
    // An offer whose REQUESTs go unanswered: after four, DISCOVER again.
    let (_, d) = sent(&c.poll(now));
    let offer = reply(
        DHCPOFFER,
        d.xid,
        ADDRESS,
        &[(OPT_SERVER_ID, &SERVER.octets())],
    );
    sent(&c.receive(&offer, now).unwrap());
    for _ in 1..REQUEST_TRIES {
        now = c.deadline().unwrap();
        let (_, r) = sent(&c.poll(now));
        assert_eq!(r.options.get(OPT_MESSAGE_TYPE), Some(&[DHCPREQUEST][..]));
    }
    now = c.deadline().unwrap();
    assert_eq!(c.poll(now), vec![]);
    let (_, d2) = sent(&c.poll(c.deadline().unwrap()));
    assert_eq!(d2.options.get(OPT_MESSAGE_TYPE), Some(&[DHCPDISCOVER][..]));
    assert_ne!(d2.xid, d.xid);
}

#[test]
fn replies_for_others_or_out_of_turn_are_ignored() {
    let t0 = Instant::now();
    let mut c = Client::new(MAC, None, 3, t0);
    let (_, d) = sent(&c.poll(t0));
    let server = [(OPT_SERVER_ID, &SERVER.octets()[..])];
    // Another transaction, another card, an ACK before any offer.
    let other = reply(DHCPOFFER, d.xid ^ 1, ADDRESS, &server);
    assert_eq!(c.receive(&other, t0).unwrap(), vec![]);
    let mut theirs = reply(DHCPOFFER, d.xid, ADDRESS, &server);
    theirs[33] ^= 0xff;
    assert_eq!(c.receive(&theirs, t0).unwrap(), vec![]);
    let early = reply(DHCPACK, d.xid, ADDRESS, &server);
    assert_eq!(c.receive(&early, t0).unwrap(), vec![]);
    // An offer naming no server cannot be requested.
    let anonymous = reply(DHCPOFFER, d.xid, ADDRESS, &[]);
    assert!(matches!(
        c.receive(&anonymous, t0),
        Err(ReplyError::Option {
            option: OPT_SERVER_ID,
            ..
        })
    ));
    // Requesting one address, an ACK for another is not taken.
    let offer = reply(DHCPOFFER, d.xid, ADDRESS, &server);
    sent(&c.receive(&offer, t0).unwrap());
    let wrong = reply(DHCPACK, d.xid, Ipv4Addr::new(10, 0, 2, 99), &server);
    assert_eq!(c.receive(&wrong, t0).unwrap(), vec![]);
    assert_eq!(c.lease(), None);
}

#[test]
fn malformed_replies_are_refused_with_the_reason() {
    let xid = 1;
    let ok = reply(DHCPACK, xid, ADDRESS, &[]);
    assert!(Reply::parse(&ok).is_ok());
    assert_eq!(Reply::parse(&ok[..100]), Err(ReplyError::Short(100)));
    assert_eq!(Reply::parse(&[]), Err(ReplyError::Short(0)));
    let mut request = ok.clone();
    request[0] = BOOTREQUEST;
    assert_eq!(Reply::parse(&request), Err(ReplyError::NotReply));
    let mut cookie = ok.clone();
    cookie[HEADER] = 0;
    assert_eq!(Reply::parse(&cookie), Err(ReplyError::Cookie));
    // An option whose length runs past the end.
    let mut cut = ok.clone();
    cut.pop();
    cut.extend([OPT_DNS, 8, 1, 2, 3]);
    assert_eq!(Reply::parse(&cut), Err(ReplyError::Truncated(OPT_DNS)));
    let mut no_len = ok.clone();
    no_len.pop();
    no_len.push(OPT_DNS);
    assert_eq!(Reply::parse(&no_len), Err(ReplyError::Truncated(OPT_DNS)));
    // A client's message type, or none.
    let discover = reply(DHCPDISCOVER, xid, ADDRESS, &[]);
    assert_eq!(Reply::parse(&discover), Err(ReplyError::MessageType(1)));
    let mut untyped = ok[..HEADER + 4].to_vec();
    untyped.push(OPT_END);
    assert_eq!(Reply::parse(&untyped), Err(ReplyError::MessageType(0)));
    // Addresses no host can have.
    for a in [
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::LOCALHOST,
    ] {
        assert_eq!(
            Reply::parse(&reply(DHCPOFFER, xid, a, &[])),
            Err(ReplyError::Address(a))
        );
    }
    // Options of the wrong shape.
    for (code, data) in [
        (OPT_SUBNET_MASK, &[255, 0, 255, 0][..]),
        (OPT_SUBNET_MASK, &[255, 255, 255][..]),
        (OPT_DNS, &[1, 1, 1][..]),
        (OPT_DNS, &[][..]),
        (OPT_SERVER_ID, &[1, 2][..]),
        (OPT_LEASE_TIME, &[0, 1][..]),
        (OPT_MTU, &[5, 0, 0][..]),
        (OPT_CLASSLESS_ROUTES, &[33, 10, 0, 0, 0, 1, 1, 1, 1][..]),
        (OPT_CLASSLESS_ROUTES, &[24, 10, 0, 1, 1][..]),
        (OPT_DOMAIN_SEARCH, &[3, b'a', b'b'][..]),
        (OPT_DOMAIN_SEARCH, &[1, b'a', 0xc0, 0][..]),
        (OPT_DOMAIN_SEARCH, &[0x80, 0][..]),
    ] {
        let r = Reply::parse(&reply(DHCPACK, xid, ADDRESS, &[(code, data)]));
        assert!(
            matches!(r, Err(ReplyError::Option { option, .. }) if option == code),
            "option {code} {data:?}: {r:?}"
        );
    }
    // A pointer loop: the second name points at itself through the first.
    let looped = [1, b'a', 0xc0, 4, 1, b'b', 0xc0, 0];
    let r = Reply::parse(&reply(
        DHCPACK,
        xid,
        ADDRESS,
        &[(OPT_DOMAIN_SEARCH, &looped)],
    ));
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn options_are_read_as_servers_write_them() {
    // A long option split in two (RFC 3396) is one.
    let r = Reply::parse(&reply(
        DHCPACK,
        1,
        ADDRESS,
        &[(OPT_DNS, &[1, 1, 1, 1]), (OPT_DNS, &[8, 8, 8, 8])],
    ))
    .unwrap();
    assert_eq!(
        r.dns,
        vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(8, 8, 8, 8)]
    );
    // Pads between options; an MTU under IPv4's minimum is ignored; a
    // search name that is not one word is left out.
    let mut m = reply(DHCPACK, 1, ADDRESS, &[]);
    m.pop();
    m.extend([OPT_PAD, OPT_PAD, OPT_MTU, 2, 0, 20, OPT_DOMAIN_NAME, 4]);
    m.extend(b"a b.");
    m.push(OPT_END);
    let r = Reply::parse(&m).unwrap();
    assert_eq!(r.mtu, None);
    assert_eq!(r.domain, None);
    // Classless routes replace the router option (RFC 3442), with an
    // on-link route (gateway 0.0.0.0) and the host bits of a destination
    // cleared.
    let routes = [
        &[0, 10, 0, 0, 1][..],
        &[32, 168, 63, 129, 16, 10, 0, 0, 1],
        &[20, 172, 16, 31, 0, 0, 0, 0],
    ]
    .concat();
    let options = vec![
        (OPT_SERVER_ID, SERVER.octets().to_vec()),
        (OPT_SUBNET_MASK, vec![255, 255, 255, 255]),
        (OPT_ROUTER, vec![192, 168, 0, 1]),
        (OPT_CLASSLESS_ROUTES, routes),
    ];
    let (_, lease) = bound(&options, Instant::now());
    assert_eq!(lease.prefix, 32, "a cloud's /32 with the gateway off-link");
    assert_eq!(
        lease.routes,
        vec![
            Route {
                destination: Ipv4Addr::UNSPECIFIED,
                prefix: 0,
                gateway: Ipv4Addr::new(10, 0, 0, 1)
            },
            Route {
                destination: Ipv4Addr::new(168, 63, 129, 16),
                prefix: 32,
                gateway: Ipv4Addr::new(10, 0, 0, 1)
            },
            Route {
                destination: Ipv4Addr::new(172, 16, 16, 0),
                prefix: 20,
                gateway: Ipv4Addr::UNSPECIFIED
            },
        ]
    );
}

#[test]
fn lease_times_are_kept_sane() {
    let t0 = Instant::now();
    let lease_of = |extra: &[(u8, Vec<u8>)]| {
        let mut options = vec![(OPT_SERVER_ID, SERVER.octets().to_vec())];
        options.extend(extra.iter().cloned());
        bound(&options, t0)
    };
    // No lease time, or an infinite one: bound for good.
    let (c, lease) = lease_of(&[]);
    assert_eq!(lease.duration, None);
    assert_eq!(c.deadline(), None);
    let (c, lease) = lease_of(&[(OPT_LEASE_TIME, u32::MAX.to_be_bytes().to_vec())]);
    assert_eq!(lease.duration, None);
    assert_eq!(c.deadline(), None);
    // A lease of no time is kept to the minimum, not renewed in a loop.
    let (_, lease) = lease_of(&[(OPT_LEASE_TIME, vec![0, 0, 0, 0])]);
    assert_eq!(lease.duration, Some(MIN_LEASE));
    assert_eq!(lease.renew, MIN_LEASE / 2);
    // T2 beyond the lease: the default; T1 after T2: at T2.
    let (_, lease) = lease_of(&[
        (OPT_LEASE_TIME, 100u32.to_be_bytes().to_vec()),
        (OPT_RENEWAL_TIME, 90u32.to_be_bytes().to_vec()),
        (OPT_REBINDING_TIME, 200u32.to_be_bytes().to_vec()),
    ]);
    assert_eq!(lease.rebind, Duration::from_millis(87_500));
    assert_eq!(lease.renew, Duration::from_millis(87_500));
    let (_, lease) = lease_of(&[
        (OPT_LEASE_TIME, 100u32.to_be_bytes().to_vec()),
        (OPT_RENEWAL_TIME, 95u32.to_be_bytes().to_vec()),
        (OPT_REBINDING_TIME, 60u32.to_be_bytes().to_vec()),
    ]);
    assert_eq!(lease.rebind, Duration::from_secs(60));
    assert_eq!(lease.renew, Duration::from_secs(60), "never after T2");
    // No netmask: the address's class.
    assert_eq!(lease.prefix, 8);
    // A T1 of no time is not taken (it would renew in a loop).
    let (c, lease) = lease_of(&[
        (OPT_LEASE_TIME, 100u32.to_be_bytes().to_vec()),
        (OPT_RENEWAL_TIME, 0u32.to_be_bytes().to_vec()),
    ]);
    assert_eq!(lease.renew, Duration::from_secs(50));
    assert_eq!(c.deadline(), Some(t0 + Duration::from_secs(50)));
}

#[test]
fn a_lease_past_its_end_when_next_looked_at_is_given_up_at_once() {
    // The machine was paused beyond the lease's end: no renewal of an
    // address it no longer holds.
    let t0 = Instant::now();
    let (mut c, lease) = bound(&full_options(), t0);
    let later = t0 + lease.duration.unwrap() + Duration::from_secs(5);
    let actions = c.poll(later);
    assert!(
        matches!(&actions[..], [Action::Unbind { lease: l, .. }] if *l == lease),
        "{actions:?}"
    );
    assert!(c.deadline().unwrap() > later);
}
