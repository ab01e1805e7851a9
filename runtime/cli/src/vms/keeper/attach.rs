//! `husk attach`: a control connection turned into the console's stream.
//! The console's output goes to every attached connection as it goes to
//! the log (from the moment each attached, or from a time it asks for,
//! replayed from the log first), and what one sends goes to
//! the console's input when the appliance was run with `-i` (else it is
//! read and dropped). A connection that does not take its output within
//! [`SEND_TIMEOUT`] is let go, so no client slows the log or the VM.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Shared;
use crate::vms::log::LogWriter;

/// How long one write to an attached connection may block.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) struct Client {
    id: u64,
    out: UnixStream,
}

/// Takes `conn` (already answered) as an attached console: its output
/// from now on (from `since_ms` on, when given), and its input when
/// `stdin` is asked for and there is one.
pub(super) fn attach(
    shared: &std::sync::Arc<Shared>,
    conn: UnixStream,
    stdin: bool,
    since_ms: Option<u64>,
) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let _ = out.set_write_timeout(Some(SEND_TIMEOUT));
    {
        let mut attached = shared.attached.lock().unwrap_or_else(|e| e.into_inner());
        // The log is written under this lock (see [`log_and_send`]): what
        // it holds since then, and the output after it, are all sent, and
        // once each, also when the output has ended already.
        if let Some(ms) = since_ms {
            let select = crate::vms::log::Select {
                since: Some(i128::from(ms) * 1_000_000),
                ..Default::default()
            };
            let past = crate::vms::log::read(&shared.vm.log(), &select).map(|(text, _)| text);
            if out.write_all(&past.unwrap_or_default()).is_err() {
                let _ = conn.shutdown(Shutdown::Both);
                return;
            }
        }
        match attached.as_mut() {
            Some(clients) => clients.push(Client { id, out }),
            // The VM's output has ended already.
            None => {
                let _ = conn.shutdown(Shutdown::Both);
                return;
            }
        }
    }
    let shared = std::sync::Arc::clone(shared);
    let _ = std::thread::Builder::new()
        .name("attach-in".into())
        .spawn(move || {
            input(&shared, conn, stdin);
            let mut attached = shared.attached.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(clients) = attached.as_mut() {
                clients.retain(|c| c.id != id);
            }
        });
}

/// What the client sends, into the console's input, until it hangs up.
fn input(shared: &Shared, mut conn: UnixStream, stdin: bool) {
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !stdin {
            continue;
        }
        let mut input = shared.input.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pipe) = input.as_mut() {
            if pipe.write_all(&buf[..n]).is_err() {
                // The VM child is gone: nobody reads its input any more.
                *input = None;
            }
        }
    }
}

/// The console's output `bytes` into the log and to every attached
/// connection, under one lock (an attach that replays the log sees each
/// byte in the log or gets it here, never both); a connection that fails
/// or blocks past [`SEND_TIMEOUT`] is let go.
pub(super) fn log_and_send(shared: &Shared, log: &mut LogWriter, bytes: &[u8]) {
    let mut attached = shared.attached.lock().unwrap_or_else(|e| e.into_inner());
    // A full disk loses log lines, never the VM.
    let _ = log.write_all(bytes);
    if let Some(clients) = attached.as_mut() {
        clients.retain_mut(|c| match c.out.write_all(bytes) {
            Ok(()) => true,
            Err(_) => {
                let _ = c.out.shutdown(Shutdown::Both);
                false
            }
        });
    }
}

/// The output ended (the VM child is gone): every attached connection
/// sees its end, and later ones are ended at once.
pub(super) fn end(shared: &Shared) {
    let mut attached = shared.attached.lock().unwrap_or_else(|e| e.into_inner());
    for c in attached.take().into_iter().flatten() {
        let _ = c.out.shutdown(Shutdown::Both);
    }
}

/// Whether the console's input is open (the appliance ran with `-i`).
pub(super) fn has_input(shared: &Shared) -> bool {
    shared
        .input
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some()
}
