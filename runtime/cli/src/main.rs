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
    /// Boot an appliance (building it first) and exit with its command's status
    Run(Box<commands::run::Args>),
    /// Build an appliance or image into a bootable root filesystem image
    Build(commands::build::Args),
    /// Show what a built image runs, and with --files what it holds
    Inspect(commands::inspect::Args),
    /// Check appliance files and report every problem with its file:line:column
    Validate(commands::validate::Args),
    /// Build or locate husk's guest kernel
    #[command(subcommand)]
    Kernel(commands::kernel::Command),
}

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    // Like any Unix filter: a closed pipe ends husk quietly.
    // SAFETY: restoring the default action of a signal has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSK_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => commands::run::run(*args, started),
        Command::Build(args) => commands::build::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
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
