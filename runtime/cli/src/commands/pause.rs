//! `husk pause` and `husk unpause`: stop every vCPU of a detached
//! appliance, and let them run on (as `docker pause` freezes a container).
//! The guest takes no CPU meanwhile and keeps its memory; its clock goes
//! on, and kvm-clock tells its kernel it was paused. `husk stop` and
//! `husk kill` resume it first.

use std::process::ExitCode;

use crate::vms::control::{Control, Request};
use crate::vms::{Status, VmDir};

#[derive(clap::Args)]
pub struct Args {
    /// The appliances to pause or resume
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn pause(args: Args) -> anyhow::Result<ExitCode> {
    each(&args, true)
}

pub fn unpause(args: Args) -> anyhow::Result<ExitCode> {
    each(&args, false)
}

fn each(args: &Args, paused: bool) -> anyhow::Result<ExitCode> {
    super::each_name(&args.names, |name| {
        let vm = VmDir::find(name)?;
        if vm.current_state()?.status != Status::Running {
            anyhow::bail!("{name} is not running (husk ps -a)");
        }
        Control::connect(&vm.control(), name)?.call(&Request::Pause { paused })?;
        println!("{name}");
        Ok(())
    })
}
