//! A DHCPv4 client (RFC 2131) for an exported appliance's machine, whose
//! network card the hypervisor's DHCP server configures (VMware, Hyper-V,
//! Azure, VirtualBox, QEMU's user network, a cloud's metadata server).
//! Under husk's own VMM the host says what the network is (`husk.net=`)
//! and none of this runs.
//!
//! This module is the wire format and the client's state machine, with
//! no I/O and no clock of its own: the caller feeds it received packets
//! and the time, and carries out what it asks ([`Action`]). The I/O loop
//! is in init's binary.
//!
//! Written here rather than taken from a crate: the DHCP crates either
//! are servers' parsers or pull a DNS library with Unicode tables into
//! PID 1 of every image, for a fixed header and a few options.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
const COOKIE: [u8; 4] = [99, 130, 83, 99];
/// The fixed header before the cookie: op to file.
const HEADER: usize = 236;
/// BOOTP's minimum message; some relays drop shorter ones.
const MIN_MESSAGE: usize = 300;
/// Asks the server to broadcast its replies: the interface has no address
/// to take a unicast one on until the lease is bound.
const FLAG_BROADCAST: u16 = 0x8000;

// Options (RFC 2132, RFC 3397, RFC 3442).
const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_DOMAIN_NAME: u8 = 15;
const OPT_MTU: u8 = 26;
const OPT_REQUESTED_ADDRESS: u8 = 50;
const OPT_LEASE_TIME: u8 = 51;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMETERS: u8 = 55;
const OPT_MESSAGE: u8 = 56;
const OPT_MAX_SIZE: u8 = 57;
const OPT_RENEWAL_TIME: u8 = 58;
const OPT_REBINDING_TIME: u8 = 59;
const OPT_CLIENT_ID: u8 = 61;
const OPT_DOMAIN_SEARCH: u8 = 119;
const OPT_CLASSLESS_ROUTES: u8 = 121;
const OPT_END: u8 = 255;

const DHCPDISCOVER: u8 = 1;
const DHCPOFFER: u8 = 2;
const DHCPREQUEST: u8 = 3;
const DHCPACK: u8 = 5;
const DHCPNAK: u8 = 6;

/// What the client asks the server for (option 55).
const PARAMETERS: [u8; 11] = [
    OPT_SUBNET_MASK,
    OPT_ROUTER,
    OPT_DNS,
    OPT_DOMAIN_NAME,
    OPT_MTU,
    OPT_LEASE_TIME,
    OPT_SERVER_ID,
    OPT_RENEWAL_TIME,
    OPT_REBINDING_TIME,
    OPT_DOMAIN_SEARCH,
    OPT_CLASSLESS_ROUTES,
];

/// The shortest lease the client keeps to: a server's shorter one would
/// have it renew in a tight loop.
const MIN_LEASE: Duration = Duration::from_secs(20);
/// At most this long between DISCOVERs (RFC 2131 4.1: 64 s).
const MAX_BACKOFF: Duration = Duration::from_secs(64);
/// REQUESTs sent for one offer before the client starts over.
const REQUEST_TRIES: u32 = 4;
/// While renewing or rebinding, at least this long between REQUESTs
/// (RFC 2131 4.4.5: 60 s).
const MIN_RENEW_RETRY: Duration = Duration::from_secs(60);
/// How far a resolver list goes: glibc reads three name servers, and six
/// search domains in old versions.
const MAX_DNS: usize = 3;
const MAX_SEARCH: usize = 6;

/// Why a received packet is not a reply for this client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("{0} bytes is shorter than a DHCP message")]
    Short(usize),
    #[error("not a BOOTREPLY for an Ethernet address")]
    NotReply,
    #[error("no DHCP magic cookie")]
    Cookie,
    #[error("option {0} runs past the end of the message")]
    Truncated(u8),
    #[error("no message type, or one a client is not sent ({0})")]
    MessageType(u8),
    #[error("option {option}: {what}")]
    Option { option: u8, what: &'static str },
    #[error("the offered address {0} cannot be a host's")]
    Address(Ipv4Addr),
}

/// What a server said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Offer,
    Ack,
    Nak,
}

/// A server's reply, its options decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: Kind,
    pub xid: u32,
    pub chaddr: [u8; 6],
    pub yiaddr: Ipv4Addr,
    pub server: Option<Ipv4Addr>,
    pub mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub mtu: Option<u16>,
    pub lease: Option<u32>,
    pub renewal: Option<u32>,
    pub rebinding: Option<u32>,
    pub routes: Option<Vec<Route>>,
    /// A NAK's reason (option 56), as the server wrote it.
    pub message: Option<String>,
}

/// A route a lease gives: to `destination/prefix` through `gateway`, or
/// on the link when the gateway is `0.0.0.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

/// An interface's configuration from an ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub server: Ipv4Addr,
    /// The default route among them, if the server gave one.
    pub routes: Vec<Route>,
    pub dns: Vec<Ipv4Addr>,
    pub search: Vec<String>,
    pub mtu: Option<u16>,
    /// `None`: an infinite lease, never renewed.
    pub duration: Option<Duration>,
    pub renew: Duration,
    pub rebind: Duration,
}

impl Lease {
    fn from_ack(reply: &Reply, server: Ipv4Addr) -> Lease {
        let prefix = reply
            .mask
            .map(|m| u32::from(m).leading_ones() as u8)
            .unwrap_or_else(|| classful_prefix(reply.yiaddr));
        // RFC 3442: with classless routes the router option is ignored.
        let routes = match &reply.routes {
            Some(routes) => routes.clone(),
            None => reply
                .routers
                .first()
                .map(|&gateway| Route {
                    destination: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    gateway,
                })
                .into_iter()
                .collect(),
        };
        let mut search = reply.search.clone();
        if search.is_empty() {
            search.extend(reply.domain.clone());
        }
        search.truncate(MAX_SEARCH);
        let mut dns = reply.dns.clone();
        dns.truncate(MAX_DNS);
        let (duration, renew, rebind) = match reply.lease {
            None | Some(u32::MAX) => (None, Duration::MAX, Duration::MAX),
            Some(secs) => {
                let lease = Duration::from_secs(secs.into()).max(MIN_LEASE);
                // A server's T1 or T2 beyond the lease, or under the
                // shortest wait, is not taken: a T1 of 0 would renew again
                // as soon as each renewal is answered.
                let at = |t: Option<u32>, default: Duration| {
                    t.map(|s| Duration::from_secs(s.into()))
                        .filter(|t| *t < lease && *t >= MIN_LEASE / 2)
                        .unwrap_or(default)
                };
                let rebind = at(reply.rebinding, lease * 7 / 8);
                let renew = at(reply.renewal, lease / 2).min(rebind);
                (Some(lease), renew, rebind)
            }
        };
        Lease {
            address: reply.yiaddr,
            prefix,
            server,
            routes,
            dns,
            search,
            mtu: reply.mtu,
            duration,
            renew,
            rebind,
        }
    }

    /// The interface's own setup (address, routes, MTU) is the same in
    /// both: a renewal that gives this needs nothing redone there.
    pub fn same_interface(&self, other: &Lease) -> bool {
        self.address == other.address
            && self.prefix == other.prefix
            && self.routes == other.routes
            && self.mtu == other.mtu
    }
}

/// Class A, B or C's own netmask, for a server that gives none.
fn classful_prefix(a: Ipv4Addr) -> u8 {
    match a.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Broadcast,
    Server(Ipv4Addr),
}

/// What the client asks its caller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send {
        to: Destination,
        packet: Vec<u8>,
    },
    /// Configure the interface from this lease. `previous` is the lease it
    /// replaces on a renewal (the interface holds it now).
    Bind {
        lease: Lease,
        previous: Option<Lease>,
    },
    /// The lease is gone (expired, or refused on renewal): take its
    /// address off the interface.
    Unbind {
        lease: Lease,
        why: String,
    },
    /// A server refused the address (a NAK), for the log.
    Refused {
        server: Option<Ipv4Addr>,
        why: String,
    },
}

#[derive(Debug, Clone)]
enum State {
    Selecting {
        next: Instant,
        tries: u32,
    },
    Requesting {
        address: Ipv4Addr,
        server: Ipv4Addr,
        next: Instant,
        tries: u32,
    },
    Bound {
        lease: Lease,
        at: Instant,
    },
    /// Renewing with the server that gave the lease (unicast), then
    /// rebinding with any (broadcast) once past T2.
    Extending {
        lease: Lease,
        at: Instant,
        next: Instant,
    },
}

/// One interface's DHCP client.
pub struct Client {
    mac: [u8; 6],
    hostname: Option<String>,
    rng: u64,
    xid: u32,
    /// When this exchange began (the `secs` field).
    began: Instant,
    state: State,
}

impl Client {
    /// A client for the card with this MAC, sending `hostname` (option
    /// 12) when the appliance has one. `seed` makes the transaction ids
    /// and the retransmission jitter: random bytes, in a guest.
    pub fn new(mac: [u8; 6], hostname: Option<&str>, seed: u64, now: Instant) -> Client {
        let mut client = Client {
            mac,
            hostname: hostname
                .filter(|h| !h.is_empty() && h.len() <= 255)
                .map(str::to_owned),
            rng: seed | 1,
            xid: 0,
            began: now,
            state: State::Selecting {
                next: now,
                tries: 0,
            },
        };
        client.xid = client.random() as u32;
        client
    }

    /// The lease held now, if any.
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound { lease, .. } | State::Extending { lease, .. } => Some(lease),
            _ => None,
        }
    }

    /// When [`Client::poll`] has something to do; `None` for an infinite
    /// lease, bound for good.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Selecting { next, .. } | State::Requesting { next, .. } => Some(*next),
            State::Bound { lease, at } => at.checked_add(lease.renew),
            State::Extending { lease, at, next } => {
                let end = lease.duration.and_then(|d| at.checked_add(d));
                Some(end.map_or(*next, |end| end.min(*next)))
            }
        }
    }

    /// Does what is due at `now`: sends or resends a request, or gives up
    /// a lease that ran out.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        match self.deadline() {
            Some(due) if due <= now => {}
            _ => return Vec::new(),
        }
        match self.state.clone() {
            State::Selecting { tries, .. } => {
                if tries == 0 {
                    self.began = now;
                }
                let packet = self.discover(now);
                let next = now + self.backoff(tries);
                self.state = State::Selecting {
                    next,
                    tries: tries + 1,
                };
                vec![Action::Send {
                    to: Destination::Broadcast,
                    packet,
                }]
            }
            State::Requesting {
                address,
                server,
                tries,
                ..
            } => {
                if tries >= REQUEST_TRIES {
                    return self.start_over(now, Vec::new());
                }
                let packet = self.request(now, Some((address, server)), None);
                self.state = State::Requesting {
                    address,
                    server,
                    next: now + self.backoff(tries),
                    tries: tries + 1,
                };
                vec![Action::Send {
                    to: Destination::Broadcast,
                    packet,
                }]
            }
            State::Bound { lease, at } | State::Extending { lease, at, .. } => {
                if lease.duration.is_some_and(|d| now >= at + d) {
                    let why = format!("the lease of {} ran out", lease.address);
                    return self.start_over(now, vec![Action::Unbind { lease, why }]);
                }
                if let State::Bound { .. } = self.state {
                    // T1: a new transaction to renew the lease.
                    self.xid = self.random() as u32;
                    self.began = now;
                }
                self.extend(lease, at, now)
            }
        }
    }

    /// One REQUEST of a renewal (before T2, to the server) or a rebinding
    /// (after it, to all), and when to send the next: half the time left
    /// to T2 or to the end, at least a minute (RFC 2131 4.4.5).
    fn extend(&mut self, lease: Lease, at: Instant, now: Instant) -> Vec<Action> {
        let t2 = at + lease.rebind;
        let (to, until) = if now < t2 {
            (Destination::Server(lease.server), t2)
        } else {
            let end = lease.duration.map_or(now + MAX_BACKOFF, |d| at + d);
            (Destination::Broadcast, end)
        };
        let wait = (until.saturating_duration_since(now) / 2).max(MIN_RENEW_RETRY);
        let next = (now + wait).min(until.max(now + Duration::from_secs(1)));
        let packet = self.request(now, None, Some(lease.address));
        self.state = State::Extending { lease, at, next };
        vec![Action::Send { to, packet }]
    }

    /// Back to DISCOVER with a new transaction, a second from now rather
    /// than at once: a server that refuses every request gets no storm.
    fn start_over(&mut self, now: Instant, actions: Vec<Action>) -> Vec<Action> {
        self.xid = self.random() as u32;
        self.state = State::Selecting {
            next: now + Duration::from_secs(1),
            tries: 0,
        };
        actions
    }

    /// Takes a received packet: what is not a reply to this client's
    /// current request is ignored (`Err` says why, for tests and logs).
    pub fn receive(&mut self, packet: &[u8], now: Instant) -> Result<Vec<Action>, ReplyError> {
        let reply = Reply::parse(packet)?;
        if reply.xid != self.xid || reply.chaddr != self.mac {
            return Ok(Vec::new());
        }
        match (self.state.clone(), reply.kind) {
            (State::Selecting { .. }, Kind::Offer) => {
                let Some(server) = reply.server else {
                    return Err(ReplyError::Option {
                        option: OPT_SERVER_ID,
                        what: "an offer without a server identifier",
                    });
                };
                self.state = State::Requesting {
                    address: reply.yiaddr,
                    server,
                    next: now,
                    tries: 0,
                };
                Ok(self.poll(now))
            }
            (
                State::Requesting {
                    address, server, ..
                },
                Kind::Ack,
            ) => {
                if reply.yiaddr != address {
                    return Ok(Vec::new());
                }
                let lease = Lease::from_ack(&reply, reply.server.unwrap_or(server));
                self.state = State::Bound {
                    lease: lease.clone(),
                    at: now,
                };
                Ok(vec![Action::Bind {
                    lease,
                    previous: None,
                }])
            }
            (State::Extending { lease: old, .. }, Kind::Ack) => {
                let lease = Lease::from_ack(&reply, reply.server.unwrap_or(old.server));
                self.state = State::Bound {
                    lease: lease.clone(),
                    at: now,
                };
                Ok(vec![Action::Bind {
                    lease,
                    previous: Some(old),
                }])
            }
            (State::Requesting { .. }, Kind::Nak) | (State::Extending { .. }, Kind::Nak) => {
                let why = reply
                    .message
                    .clone()
                    .unwrap_or_else(|| "no reason given".into());
                let mut actions = vec![Action::Refused {
                    server: reply.server,
                    why: why.clone(),
                }];
                if let State::Extending { lease, .. } = self.state.clone() {
                    actions.push(Action::Unbind {
                        lease,
                        why: format!("the server refused to renew it: {why}"),
                    });
                }
                Ok(self.start_over(now, actions))
            }
            _ => Ok(Vec::new()),
        }
    }

    /// 1, 2, 4, ... 64 s after the `tries`th send, give or take a
    /// sixteenth, so that many machines booting at once spread out.
    fn backoff(&mut self, tries: u32) -> Duration {
        let base = Duration::from_secs(1u64 << tries.min(6)).min(MAX_BACKOFF);
        let spread = base / 8;
        let jitter = Duration::from_nanos(self.random() % (spread.as_nanos() as u64 + 1));
        base - spread / 2 + jitter
    }

    /// xorshift64: enough for transaction ids and jitter.
    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn discover(&self, now: Instant) -> Vec<u8> {
        let mut m = self.message(now, DHCPDISCOVER, Ipv4Addr::UNSPECIFIED);
        self.common_options(&mut m);
        finish(m)
    }

    /// A REQUEST: `selecting` names the offer taken (broadcast, options
    /// 50 and 54); `ciaddr` is the address held, when renewing or
    /// rebinding (RFC 2131 4.3.2).
    fn request(
        &self,
        now: Instant,
        selecting: Option<(Ipv4Addr, Ipv4Addr)>,
        ciaddr: Option<Ipv4Addr>,
    ) -> Vec<u8> {
        let mut m = self.message(now, DHCPREQUEST, ciaddr.unwrap_or(Ipv4Addr::UNSPECIFIED));
        if let Some((address, server)) = selecting {
            option(&mut m, OPT_REQUESTED_ADDRESS, &address.octets());
            option(&mut m, OPT_SERVER_ID, &server.octets());
        }
        self.common_options(&mut m);
        finish(m)
    }

    fn message(&self, now: Instant, kind: u8, ciaddr: Ipv4Addr) -> Vec<u8> {
        let mut m = Vec::with_capacity(MIN_MESSAGE + 64);
        m.extend([BOOTREQUEST, HTYPE_ETHERNET, 6, 0]);
        m.extend(self.xid.to_be_bytes());
        let secs = now.saturating_duration_since(self.began).as_secs();
        m.extend((secs.min(u16::MAX.into()) as u16).to_be_bytes());
        // Broadcast replies until an address is bound; a renewal's come
        // to that address.
        let flags = if ciaddr.is_unspecified() {
            FLAG_BROADCAST
        } else {
            0
        };
        m.extend(flags.to_be_bytes());
        m.extend(ciaddr.octets());
        m.resize(m.len() + 12, 0); // yiaddr, siaddr, giaddr
        m.extend(self.mac);
        m.resize(HEADER, 0); // the rest of chaddr, sname, file
        m.extend(COOKIE);
        option(&mut m, OPT_MESSAGE_TYPE, &[kind]);
        m
    }

    fn common_options(&self, m: &mut Vec<u8>) {
        let mut id = vec![HTYPE_ETHERNET];
        id.extend(self.mac);
        option(m, OPT_CLIENT_ID, &id);
        option(m, OPT_MAX_SIZE, &1500u16.to_be_bytes());
        option(m, OPT_PARAMETERS, &PARAMETERS);
        if let Some(name) = &self.hostname {
            option(m, OPT_HOSTNAME, name.as_bytes());
        }
    }
}

fn option(m: &mut Vec<u8>, code: u8, data: &[u8]) {
    // Every option this client sends is under 256 bytes (a hostname is
    // cut to 255 in Client::new).
    m.push(code);
    m.push(data.len() as u8);
    m.extend(data);
}

fn finish(mut m: Vec<u8>) -> Vec<u8> {
    m.push(OPT_END);
    if m.len() < MIN_MESSAGE {
        m.resize(MIN_MESSAGE, OPT_PAD);
    }
    m
}

impl Reply {
    /// Decodes a server's message. The options field only: a server that
    /// overloads `sname` and `file` (option 52) has what is there ignored.
    pub fn parse(packet: &[u8]) -> Result<Reply, ReplyError> {
        if packet.len() < HEADER + COOKIE.len() {
            return Err(ReplyError::Short(packet.len()));
        }
        if packet[0] != BOOTREPLY || packet[1] != HTYPE_ETHERNET || packet[2] != 6 {
            return Err(ReplyError::NotReply);
        }
        if packet[HEADER..HEADER + 4] != COOKIE {
            return Err(ReplyError::Cookie);
        }
        let xid = u32::from_be_bytes(packet[4..8].try_into().unwrap());
        let yiaddr = addr(&packet[16..20]);
        let mut chaddr = [0; 6];
        chaddr.copy_from_slice(&packet[28..34]);
        let options = Options::parse(&packet[HEADER + 4..])?;

        let kind = match options.get(OPT_MESSAGE_TYPE) {
            Some([DHCPOFFER]) => Kind::Offer,
            Some([DHCPACK]) => Kind::Ack,
            Some([DHCPNAK]) => Kind::Nak,
            Some([other]) => return Err(ReplyError::MessageType(*other)),
            _ => return Err(ReplyError::MessageType(0)),
        };
        let one = |code, what| -> Result<Option<Ipv4Addr>, ReplyError> {
            match options.get(code) {
                None => Ok(None),
                Some(d) if d.len() == 4 => Ok(Some(addr(d))),
                Some(_) => Err(ReplyError::Option { option: code, what }),
            }
        };
        let list = |code| -> Result<Vec<Ipv4Addr>, ReplyError> {
            match options.get(code) {
                None => Ok(Vec::new()),
                Some(d) if !d.is_empty() && d.len() % 4 == 0 => {
                    Ok(d.chunks_exact(4).map(addr).collect())
                }
                Some(_) => Err(ReplyError::Option {
                    option: code,
                    what: "not a list of addresses",
                }),
            }
        };
        let seconds = |code| -> Result<Option<u32>, ReplyError> {
            match options.get(code) {
                None => Ok(None),
                Some(d) if d.len() == 4 => Ok(Some(u32::from_be_bytes(d.try_into().unwrap()))),
                Some(_) => Err(ReplyError::Option {
                    option: code,
                    what: "not a 32-bit time",
                }),
            }
        };
        let mask = one(OPT_SUBNET_MASK, "not an address")?;
        if let Some(m) = mask {
            let m = u32::from(m);
            if m.leading_ones() + m.trailing_zeros() != 32 {
                return Err(ReplyError::Option {
                    option: OPT_SUBNET_MASK,
                    what: "not a contiguous netmask",
                });
            }
        }
        let mtu = match options.get(OPT_MTU) {
            None => None,
            Some(d) if d.len() == 2 => match u16::from_be_bytes([d[0], d[1]]) {
                // IPv4's minimum; a smaller one would cut the network off.
                68.. => Some(u16::from_be_bytes([d[0], d[1]])),
                _ => None,
            },
            Some(_) => {
                return Err(ReplyError::Option {
                    option: OPT_MTU,
                    what: "not a 16-bit size",
                })
            }
        };
        let text = |code| {
            options
                .get(code)
                .map(|d| String::from_utf8_lossy(d).into_owned())
        };
        let domain = text(OPT_DOMAIN_NAME)
            .map(|d| d.trim_end_matches(['\0', '.']).to_owned())
            .filter(|d| is_domain(d));
        let search = match options.get(OPT_DOMAIN_SEARCH) {
            None => Vec::new(),
            Some(d) => domain_list(d)?
                .into_iter()
                .filter(|d| is_domain(d))
                .collect(),
        };
        let routes = options
            .get(OPT_CLASSLESS_ROUTES)
            .map(classless_routes)
            .transpose()?;
        let reply = Reply {
            kind,
            xid,
            chaddr,
            yiaddr,
            server: one(OPT_SERVER_ID, "not an address")?,
            mask,
            routers: list(OPT_ROUTER)?,
            dns: list(OPT_DNS)?,
            domain,
            search,
            mtu,
            lease: seconds(OPT_LEASE_TIME)?,
            renewal: seconds(OPT_RENEWAL_TIME)?,
            rebinding: seconds(OPT_REBINDING_TIME)?,
            routes,
            message: text(OPT_MESSAGE),
        };
        if kind != Kind::Nak {
            let a = reply.yiaddr;
            if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
                return Err(ReplyError::Address(a));
            }
        }
        Ok(reply)
    }
}

fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// A name `resolv.conf` can hold: one word of letters, digits, `-`, `_`
/// and dots.
fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The options field, each option's data joined across repeats (RFC
/// 3396: a long option comes split in pieces of the same code).
struct Options {
    data: Vec<Option<Vec<u8>>>,
}

impl Options {
    fn parse(mut b: &[u8]) -> Result<Options, ReplyError> {
        let mut data: Vec<Option<Vec<u8>>> = vec![None; 256];
        while let Some((&code, rest)) = b.split_first() {
            match code {
                OPT_PAD => b = rest,
                OPT_END => break,
                _ => {
                    let (&len, rest) = rest.split_first().ok_or(ReplyError::Truncated(code))?;
                    let len = usize::from(len);
                    if rest.len() < len {
                        return Err(ReplyError::Truncated(code));
                    }
                    data[usize::from(code)]
                        .get_or_insert_with(Vec::new)
                        .extend(&rest[..len]);
                    b = &rest[len..];
                }
            }
        }
        Ok(Options { data })
    }

    fn get(&self, code: u8) -> Option<&[u8]> {
        self.data[usize::from(code)].as_deref()
    }
}

/// Option 121: each route a width, the destination's significant octets,
/// then the router.
fn classless_routes(mut b: &[u8]) -> Result<Vec<Route>, ReplyError> {
    let bad = |what| ReplyError::Option {
        option: OPT_CLASSLESS_ROUTES,
        what,
    };
    let mut routes = Vec::new();
    while let Some((&prefix, rest)) = b.split_first() {
        if prefix > 32 {
            return Err(bad("a route wider than 32 bits"));
        }
        let octets = usize::from(prefix).div_ceil(8);
        if rest.len() < octets + 4 {
            return Err(bad("a route cut short"));
        }
        let mut dst = [0; 4];
        dst[..octets].copy_from_slice(&rest[..octets]);
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        routes.push(Route {
            destination: Ipv4Addr::from(u32::from_be_bytes(dst) & mask),
            prefix,
            gateway: addr(&rest[octets..octets + 4]),
        });
        b = &rest[octets + 4..];
    }
    Ok(routes)
}

/// Option 119: domain names in DNS wire form, where a name may end in a
/// pointer to an earlier one (RFC 1035 4.1.4) within the option.
fn domain_list(b: &[u8]) -> Result<Vec<String>, ReplyError> {
    let bad = |what| ReplyError::Option {
        option: OPT_DOMAIN_SEARCH,
        what,
    };
    let mut names = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let mut labels: Vec<String> = Vec::new();
        let mut i = at;
        // Where the next name starts: after this one's first pointer, or
        // its end.
        let mut resume = None;
        // Each pointer must go back before the last one's target, so
        // following them ends, having read each byte at most once.
        let mut limit = b.len();
        loop {
            let &len = b.get(i).ok_or(bad("a name cut short"))?;
            match len {
                0 => {
                    resume.get_or_insert(i + 1);
                    break;
                }
                1..=63 => {
                    let label = b.get(i + 1..i + 1 + usize::from(len));
                    let label = label.ok_or(bad("a label cut short"))?;
                    labels.push(String::from_utf8_lossy(label).into_owned());
                    i += 1 + usize::from(len);
                }
                0xc0.. => {
                    let &low = b.get(i + 1).ok_or(bad("a pointer cut short"))?;
                    resume.get_or_insert(i + 2);
                    let target = usize::from(len & 0x3f) << 8 | usize::from(low);
                    if target >= i.min(limit) {
                        return Err(bad("a pointer that does not point back"));
                    }
                    limit = target;
                    i = target;
                }
                _ => return Err(bad("a label type DNS does not have")),
            }
        }
        if !labels.is_empty() {
            names.push(labels.join("."));
        }
        at = resume.expect("set before the loop ends");
    }
    Ok(names)
}

#[cfg(test)]
mod tests;
