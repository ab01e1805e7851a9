//! `husk cp`: files between the host and a running detached appliance, as
//! `docker cp` copies them for a container. The guest agent packs or
//! unpacks its side (`agent::copy`); this process does the host's.

use std::io::{self, BufReader, BufWriter, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use agent::copy::{self, Unpack};
use agent::{Request, Response};
use anyhow::Context;

use crate::vms::VmDir;

#[derive(clap::Args)]
pub struct Args {
    /// Keep the files' owners (user and group IDs) when copying into the
    /// appliance; without it they belong to the guest's root
    #[arg(short, long)]
    archive: bool,
    /// NAME:PATH in an appliance, a host path, or - (a tar archive on
    /// stdin)
    source: String,
    /// NAME:PATH in an appliance, a host path, or - (a tar archive on
    /// stdout)
    dest: String,
}

/// How long the guest has for each answer (not for the copy itself).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const BUFFER: usize = 256 << 10;

/// `NAME:PATH`, a path in an appliance: a colon before any `/`, as
/// docker reads it (`./a:b` is a host path).
fn in_appliance(arg: &str) -> Option<(&str, String)> {
    let (name, path) = arg.split_once(':')?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    // Guest paths are taken from its root.
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    Some((name, path))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match (in_appliance(&args.source), in_appliance(&args.dest)) {
        (Some((name, path)), None) => copy_out(name, &path, &args.dest),
        (None, Some((name, path))) => copy_in(&args.source, name, &path, args.archive),
        (Some(_), Some(_)) => anyhow::bail!("copying between two appliances is not supported"),
        (None, None) => anyhow::bail!("one of the paths must be NAME:PATH in an appliance"),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// An agent connection of the running appliance `name`.
fn agent(name: &str) -> anyhow::Result<UnixStream> {
    let conn = VmDir::find(name)?.agent()?;
    conn.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    Ok(conn)
}

fn answer(conn: &mut UnixStream, what: &str) -> anyhow::Result<()> {
    match agent::read::<Response>(conn).with_context(|| format!("{what}: the guest agent"))? {
        Some(Response::Ok) => Ok(()),
        Some(Response::Error { message, .. }) => anyhow::bail!("{what}: {message}"),
        Some(other) => anyhow::bail!("{what}: unexpected answer from the guest agent: {other:?}"),
        None => anyhow::bail!("{what}: the guest agent closed the connection"),
    }
}

fn copy_out(name: &str, path: &str, dest: &str) -> anyhow::Result<()> {
    let contents = copy::is_contents(path);
    let mut conn = agent(name)?;
    let what = format!("{name}:{path}");
    agent::write(
        &mut conn,
        &Request::CopyOut {
            path: path.to_string(),
            contents,
        },
    )?;
    answer(&mut conn, &what)?;
    // The archive may take long to read: only a silent guest times out.
    let reader = BufReader::with_capacity(BUFFER, conn);
    if dest == "-" {
        let mut reader = reader;
        io::copy(&mut reader, &mut io::stdout().lock()).context("writing the archive")?;
        return Ok(());
    }
    let how = Unpack {
        owners: false,
        special_bits: false,
    };
    copy::unpack(reader, dest, contents, how)
        .with_context(|| format!("cannot copy {what} to {dest}"))
}

fn copy_in(source: &str, name: &str, path: &str, owners: bool) -> anyhow::Result<()> {
    // A tar archive on stdin is what a folder holds, for a folder.
    let contents = source == "-" || copy::is_contents(source);
    if source != "-" {
        std::fs::symlink_metadata(source).with_context(|| format!("cannot copy {source}"))?;
    }
    let mut conn = agent(name)?;
    let what = format!("{name}:{path}");
    agent::write(
        &mut conn,
        &Request::CopyIn {
            path: path.to_string(),
            contents,
            owners,
        },
    )?;
    answer(&mut conn, &what)?;
    let sent = {
        let mut writer = BufWriter::with_capacity(BUFFER, &conn);
        let sent = if source == "-" {
            io::copy(&mut io::stdin().lock(), &mut writer)
                .map(drop)
                .context("reading the archive on stdin")
        } else {
            copy::pack(Path::new(source), contents, &mut writer)
                .with_context(|| format!("cannot copy {source}"))
        };
        sent.and_then(|()| writer.flush().context("sending the archive"))
    };
    // The end of the archive; then the guest says how it went (also
    // after a failure here: it saw the archive end early).
    let _ = conn.shutdown(Shutdown::Write);
    let answered = answer(&mut conn, &what);
    sent?;
    answered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appliance_paths_are_name_colon_path() {
        assert_eq!(in_appliance("web:/srv"), Some(("web", "/srv".into())));
        assert_eq!(in_appliance("web:srv/x"), Some(("web", "/srv/x".into())));
        assert_eq!(in_appliance("web:"), Some(("web", "/".into())));
        assert_eq!(in_appliance("./a:b"), None);
        assert_eq!(in_appliance("/tmp/a:b"), None);
        assert_eq!(in_appliance(":x"), None);
        assert_eq!(in_appliance("plain"), None);
    }
}
