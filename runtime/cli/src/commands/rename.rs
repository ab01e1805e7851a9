//! `husk rename`: a stopped detached appliance under another name, as
//! `docker rename` does (a running one is refused: its keeper, its guest
//! and the members of its networks know it by its name).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use anyhow::Context;

use crate::vms::{check_name, Status, VmDir};

#[derive(clap::Args)]
pub struct Args {
    name: String,
    new_name: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (old, new) = (&args.name, &args.new_name);
    check_name(new)?;
    let vm = VmDir::find(old)?;
    // Held across the move: no keeper starts under the old name
    // meanwhile (one that waits for it finds the folder gone).
    let _held = vm.lock_state()?;
    let mut state = vm.current_state()?;
    if state.status != Status::Exited {
        anyhow::bail!(
            "{old} is running, and its keeper, its guest and its networks know it by its name: \
             husk stop {old} first"
        );
    }
    state.check_recorded()?;
    let before = state.clone();
    state.name = new.clone();
    state.args = super::run::with_option(&state.args, &["--name"], new)
        .with_context(|| format!("{old}'s recorded command line takes no --name {new}"))?;
    // Its state first, then its folder; the state back should the folder
    // not move (the name taken meanwhile).
    let write = |state| {
        vm.write_state(state)
            .with_context(|| format!("cannot write {}", vm.state_file().display()))
    };
    write(&state)?;
    let moved = vm.dir.with_file_name(new);
    if let Err(e) = rename_new(&vm.dir, &moved) {
        write(&before)?;
        return Err(match e.raw_os_error() {
            Some(libc::EEXIST) => anyhow::anyhow!("the name {new:?} is in use: choose another"),
            _ => anyhow::anyhow!(
                "cannot move {} to {}: {e}",
                vm.dir.display(),
                moved.display()
            ),
        });
    }
    Ok(ExitCode::SUCCESS)
}

/// Renames `from` to `to`, which must not exist (not even empty: a run
/// that took the name has made its folder).
fn rename_new(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    let c =
        |p: &std::path::Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that outlive the call; renameat2
    // reads them and touches no other memory of ours.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
