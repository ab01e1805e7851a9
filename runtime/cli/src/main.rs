//! `husk`: build and run virtual appliances as KVM micro-VMs.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "husk",
    version,
    about = "Run software as virtual appliances in KVM micro-VMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check appliance files and report every problem with its file:line:column
    Validate(commands::validate::Args),
    /// Build or locate husk's guest kernel
    #[command(subcommand)]
    Kernel(commands::kernel::Command),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSK_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => commands::validate::run(args),
        Command::Kernel(cmd) => commands::kernel::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("husk: {e:#}");
            ExitCode::FAILURE
        }
    }
}
