//! The guest's side of `husk cp`: an agent connection that carries one
//! archive out of the guest, or into it (see `agent::copy`).

use std::io::{self, BufReader, BufWriter, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;

use agent::copy::{self, Unpack};
use agent::{ErrorKind, Response};

/// Archive blocks are 512 bytes: written one by one, each would be a
/// vsock packet of its own.
const BUFFER: usize = 256 << 10;

fn refuse(conn: &mut UnixStream, kind: ErrorKind, message: String) {
    let _ = agent::write(conn, &Response::Error { kind, message });
}

/// Sends the archive of `path`, then ends the connection. A failure
/// after the answer cuts the archive short, which the host reports.
pub(super) fn out(mut conn: UnixStream, path: &str, contents: bool) {
    if let Err(e) = std::fs::symlink_metadata(path) {
        return refuse(&mut conn, ErrorKind::Failed, format!("{path}: {e}"));
    }
    if agent::write(&mut conn, &Response::Ok).is_err() {
        return;
    }
    let mut writer = BufWriter::with_capacity(BUFFER, &conn);
    if let Err(e) = copy::pack(Path::new(path), contents, &mut writer) {
        // The host sees the archive end early; the reason stays here.
        crate::say(&format!("copying {path} out: {e}"));
        drop(writer);
        let _ = conn.shutdown(Shutdown::Both);
    }
}

/// Takes an archive the host sends until it ends its side, unpacks it at
/// `path` as root (or as the archive's owners), then answers.
pub(super) fn into(mut conn: UnixStream, path: &str, contents: bool, owners: bool) {
    if agent::write(&mut conn, &Response::Ok).is_err() {
        return;
    }
    let how = Unpack {
        owners,
        // The host's user (root's, here) decides what its files are.
        special_bits: true,
    };
    let mut reader = BufReader::with_capacity(BUFFER, &conn);
    let done = copy::unpack(&mut reader, path, contents, how);
    // What follows the archive's end (padding, or the rest of an archive
    // that was refused) is read, so the host's answer is not lost to a
    // reset of a connection closed with data unread.
    let _ = io::copy(&mut reader, &mut io::sink());
    drop(reader);
    let answer = match done {
        Ok(()) => Response::Ok,
        Err(e) => Response::Error {
            kind: ErrorKind::Failed,
            message: crate::chain(&e),
        },
    };
    let _ = agent::write(&mut conn, &answer);
    let _ = conn.flush();
}
