//! Any bytes as DHCP servers' replies to an exported appliance's client,
//! at any times: each is decoded or refused, never a panic, and whatever
//! the servers say the client keeps sane leases and never has anything
//! due at once again (no packet storm, no busy loop).
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use husk_init::dhcp::{Action, Client, Reply};
use libfuzzer_sys::fuzz_target;

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

#[derive(Arbitrary, Debug)]
struct Step {
    /// Seconds since the step before.
    wait: u16,
    /// Written over the packet's xid and chaddr with the client's own, so
    /// most packets reach the state machine rather than stop at the ids.
    patch: bool,
    packet: Vec<u8>,
}

fn check(actions: &[Action], xid: &mut u32) {
    for a in actions {
        match a {
            Action::Send { packet, .. } => {
                assert!(packet.len() >= 300, "a short request");
                *xid = u32::from_be_bytes(packet[4..8].try_into().unwrap());
            }
            Action::Bind { lease, .. } | Action::Unbind { lease, .. } => {
                assert!(lease.prefix <= 32);
                assert!(lease.renew <= lease.rebind);
                if let Some(d) = lease.duration {
                    assert!(lease.rebind < d);
                }
            }
            Action::Refused { .. } => {}
        }
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let mut now = Instant::now();
    let mut client = Client::new(MAC, Some("web"), 1, now);
    let mut xid = 0;
    for step in steps {
        let _ = Reply::parse(&step.packet);
        now += Duration::from_secs(step.wait.into());
        let actions = client.poll(now);
        check(&actions, &mut xid);
        let mut packet = step.packet;
        if step.patch && packet.len() >= 34 {
            packet[4..8].copy_from_slice(&xid.to_be_bytes());
            packet[28..34].copy_from_slice(&MAC);
        }
        if let Ok(actions) = client.receive(&packet, now) {
            check(&actions, &mut xid);
        }
        assert!(
            client.deadline().is_none_or(|d| d > now),
            "something is due at once again"
        );
    }
});
