//! `husk logs`: a detached appliance's console.

use std::io::Write;
use std::process::ExitCode;

use crate::vms::{log, Status, VmDir};

#[derive(clap::Args)]
pub struct Args {
    /// Keep printing what the appliance writes, until it stops
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines
    #[arg(short = 'n', long, value_name = "N")]
    tail: Option<usize>,
    name: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let vm = VmDir::find(&args.name)?;
    let path = vm.log();
    // What is there now, then (with -f) what comes after it.
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    let text = log::tail(&path, args.tail)?;
    let mut out = std::io::stdout().lock();
    // The file may have grown between the two reads: print up to `size`
    // of it here, the rest below.
    let grown = std::fs::metadata(&path)
        .map_or(0, |m| m.len())
        .saturating_sub(size);
    let shown = &text[..text.len().saturating_sub(grown as usize)];
    out.write_all(shown)?;
    out.flush()?;
    if args.follow {
        let done = || {
            vm.current_state()
                .map_or(true, |s| s.status == Status::Exited)
        };
        if path.exists() {
            log::follow(&path, size, &mut out, done)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
