//! `husk wait`: block until a detached appliance stops; print its exit
//! status (as `docker wait` does).

use std::process::ExitCode;

use crate::vms::control::{Control, Request, Response};
use crate::vms::{Status, VmDir};

#[derive(clap::Args)]
pub struct Args {
    name: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let vm = VmDir::find(&args.name)?;
    if vm.current_state()?.status != Status::Exited {
        if let Ok(mut control) = Control::connect(&vm.control(), &args.name) {
            // An answer, or the keeper gone: either way, the state says.
            let _ = control
                .call(&Request::Wait)
                .map(|r| matches!(r, Response::Exited { .. }));
        }
        // The keeper writes the state just after it answers.
        for _ in 0..200 {
            if vm.current_state()?.status == Status::Exited {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let state = vm.current_state()?;
    if state.never_started() {
        anyhow::bail!("{} has not been started (husk start {0})", args.name);
    }
    match state.exit_code {
        Some(code) => {
            println!("{code}");
            Ok(ExitCode::SUCCESS)
        }
        None => anyhow::bail!(
            "{}'s keeper was killed: its exit status is unknown",
            args.name
        ),
    }
}
