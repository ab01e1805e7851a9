use std::path::PathBuf;
use std::process::ExitCode;

use appliance_spec::{Appliance, SpecError};

#[derive(clap::Args)]
pub struct Args {
    /// Appliance files (appliance.toml)
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Exit 0 when every file is valid, 1 with the problems on stderr otherwise.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    for file in &args.files {
        match Appliance::load(file) {
            Ok(a) => println!("{}: ok ({})", file.display(), a.appliance.name),
            Err(SpecError::Invalid(diags)) => {
                ok = false;
                eprintln!("{diags}");
            }
            Err(e) => {
                ok = false;
                eprintln!("husk: {:#}", anyhow::Error::from(e));
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
