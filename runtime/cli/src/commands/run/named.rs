//! Snapshots a user takes and names: `husk snapshot create VM NAME` of a
//! running detached appliance (paused, saved, resumed), and
//! `husk run --from-snapshot NAME`, which restores it and goes on running
//! it where it was.
//!
//! A detached VM's child writes what a snapshot of it would be into its
//! folder before the VM starts ([`Offer`]): the snapshot's header and
//! disks, and the `husk run` command line a restore runs again, or why
//! none can be taken. The keeper makes the snapshot's files when asked and
//! hands them to the VMM, which writes them while the guest is paused.
//!
//! A restore runs the recorded command line again (the appliance, its
//! command, env and VM shape are the snapshot's), with this run's `-d`,
//! `--name`, `--rm`, `--timeout` and the like, and with this run's `-p`
//! (when given) instead of every port the snapshot's run published; it
//! restores the snapshot instead of booting. The guest is then in the
//! middle of its command: it gets a fresh seed for its random generator through the
//! guest agent as soon as it runs again; its clock is right already
//! (kvm-clock is restored against the host's wall clock).

use std::fs;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use vmm::snapshot::{Header, OnRequest, Restore};

use super::warm::{self, Meta, META_FILE};
use super::Args;
use crate::vms::VmDir;

/// Set in a detached VM child's environment by its keeper: the
/// descriptor of its end of the snapshot request socket.
pub const SNAPSHOT_FD_ENV: &str = "HUSK_SNAPSHOT_FD";

/// What a snapshot of a running detached VM would be, as its VM child
/// writes it into the VM's folder ([`VmDir::snapshot_offer`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "offer")]
pub enum Offer {
    Ready {
        meta: Box<Meta>,
        header: Header,
        disks: usize,
    },
    /// No snapshot can be taken of this VM, and why.
    Refused { why: String },
}

/// A snapshot name: a VM name's rules, and never a warm-start key.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    crate::vms::check_name(name).context("a snapshot's name")?;
    if name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("{name}: 32 hex digits name a warm-start snapshot; choose another name");
    }
    Ok(())
}

/// A named snapshot to restore: its folder and what it was taken of.
pub struct Named {
    pub dir: PathBuf,
    pub meta: Meta,
}

/// `husk run --from-snapshot NAME ...`: the snapshot's recorded command
/// line, in the folder it was typed in, with this run's own flags on top.
pub fn resolve(this: Args, name: &str) -> anyhow::Result<(Args, Named)> {
    check_name(name)?;
    let dir = warm::root()?.join(name);
    let meta: Meta = match fs::read(dir.join(META_FILE)) {
        Ok(text) => serde_json::from_slice(&text)
            .with_context(|| format!("{} does not parse", dir.join(META_FILE).display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("no snapshot named {name} (see husk snapshot ls)")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    if meta.args.first().map(String::as_str) != Some("run") {
        anyhow::bail!(
            "{name} is not a snapshot husk snapshot create took (a warm start's: husk run restores \
             those by itself)"
        );
    }
    if let Some(cwd) = &meta.cwd {
        std::env::set_current_dir(cwd).with_context(|| {
            format!(
                "{name} was taken of an appliance run in {}, which is gone",
                cwd.display()
            )
        })?;
    }
    let mut args = crate::parse_run_args(&meta.args)
        .with_context(|| format!("{name}'s recorded command line does not parse"))?;
    // How this run runs is this run's; what runs is the snapshot's.
    args.detach = this.detach;
    args.name = this.name;
    args.wait_ready = this.wait_ready;
    args.rm = this.rm;
    args.timeout = this.timeout;
    args.timings = this.timings;
    args.seccomp = this.seccomp;
    args.jail = this.jail;
    args.no_jail = this.no_jail;
    args.jail_user = this.jail_user;
    args.hold = false;
    args.cold = true;
    // The snapshot's run may still be running and hold its ports: this
    // run's -p, when given, are the only ones it publishes.
    if !this.publish.is_empty() {
        args.publish = this.publish;
        args.replace_ports = true;
    }
    Ok((args, Named { dir, meta }))
}

impl Named {
    /// Opens the snapshot for a VM of `kernel` and `image` with the
    /// recorded shape: refused, saying why, when either changed since.
    pub fn open(
        &self,
        kernel: &Path,
        image: &Path,
        cpus: u8,
        memory_mib: u64,
    ) -> anyhow::Result<Restore> {
        let header = Header::new(
            &warm::file_id(kernel)?,
            &warm::file_id(image)?,
            cpus,
            memory_mib,
            Vec::new(),
        );
        Restore::open(&self.dir, &header)
            .with_context(|| format!("cannot restore the snapshot in {}", self.dir.display()))
    }
}

/// The restored guest's first host connection: to its agent, with a
/// request to reseed its random generator already written. Made before
/// the VMM starts (the VM's socket is bound, so the connection waits in
/// its backlog); the device takes it at once when the VM runs again.
pub fn reseed_connection(uds: &Path) -> anyhow::Result<UnixStream> {
    let seed = warm::host_seed()?;
    let mut conn =
        UnixStream::connect(uds).with_context(|| format!("cannot connect to {}", uds.display()))?;
    let mut bytes = format!("CONNECT {}\n", agent::PORT).into_bytes();
    bytes.extend(agent::encode(&agent::Request::Reseed { seed }));
    // A few dozen bytes fit the socket's buffer: this never blocks.
    conn.set_nonblocking(true)
        .and_then(|()| conn.write_all(&bytes))
        .context("cannot hand the restored guest its seed")?;
    Ok(conn)
}

/// A detached VM child's side: the socket its keeper passed (see
/// [`SNAPSHOT_FD_ENV`]), and what a snapshot of this VM would be,
/// written into its folder. `offer` is `Err(why)` for a VM no snapshot
/// can be taken of: the keeper then refuses snapshots, and the socket
/// serves its pauses and resumes alone.
pub fn serve_requests(
    vm: &VmDir,
    offer: Result<(Header, Meta, usize), String>,
) -> anyhow::Result<Option<OnRequest>> {
    let Some(fd) = std::env::var(SNAPSHOT_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
    else {
        return Ok(None);
    };
    // Only this process takes it: a child of ours must not.
    std::env::remove_var(SNAPSHOT_FD_ENV);
    // SAFETY: the keeper passed this descriptor, its end of a socket pair,
    // for this process alone, and nothing here has used the number: it is
    // owned from here on (and close-on-exec set again below).
    let socket = unsafe { UnixDatagram::from_raw_fd(fd) };
    // SAFETY: F_SETFD on a descriptor we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    socket
        .set_nonblocking(true)
        .context("the snapshot request socket")?;
    // Pauses and resumes are served either way.
    let (written, header) = match offer {
        Ok((header, meta, disks)) => (
            Offer::Ready {
                meta: Box::new(meta),
                header: header.clone(),
                disks,
            },
            Ok(header),
        ),
        Err(why) => (Offer::Refused { why: why.clone() }, Err(why)),
    };
    let text = serde_json::to_vec_pretty(&written).expect("plain data serializes");
    crate::vms::write_file(&vm.snapshot_offer(), text)
        .with_context(|| format!("cannot write {}", vm.snapshot_offer().display()))?;
    Ok(Some(OnRequest { socket, header }))
}

/// What a snapshot of this detached VM, taken while it runs, would be:
/// its header, what it is of, and its disks; or why none can be taken.
pub(super) fn offer(
    args: &super::Args,
    plan: &super::Plan,
    named: &Option<Named>,
    kernel: &std::path::Path,
    vm: &crate::vms::VmDir,
) -> Result<(vmm::snapshot::Header, super::warm::Meta, usize), String> {
    let Some(image) = &plan.image else {
        return Err("it boots no appliance image".into());
    };
    super::warm::eligible(plan.husk_init, &plan.disks)?;
    let id = |p: &std::path::Path| super::warm::file_id(p).map_err(|e| format!("{e:#}"));
    let (kernel_id, image_id) = (id(kernel)?, id(&image.path)?);
    let header = vmm::snapshot::Header::new(
        &kernel_id,
        &image_id,
        plan.cpus,
        plan.memory_mib,
        Vec::new(),
    );
    // A restore runs this command line again: the one this VM was first
    // started with, also when it was itself restored from a snapshot.
    let (recorded, cwd) = match named {
        Some(n) => (n.meta.args.clone(), n.meta.cwd.clone()),
        None => (
            std::env::args().skip(1).collect(),
            std::env::current_dir().ok(),
        ),
    };
    let meta = super::warm::Meta {
        target: args.target.clone().unwrap_or_default(),
        kernel: kernel.to_path_buf(),
        image: image.path.clone(),
        kernel_id,
        image_id,
        cpus: plan.cpus,
        memory_mib: plan.memory_mib,
        created_ms: 0,
        args: recorded,
        cwd,
        from: Some(vm.name.clone()),
    };
    Ok((header, meta, plan.disks.len()))
}
