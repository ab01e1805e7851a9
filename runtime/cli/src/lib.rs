//! The husk command line: `husk` (build and run virtual appliances as KVM
//! micro-VMs) and `husk-runtime` (runc's command line over the same
//! machinery, for podman, docker and containerd). Both binaries are thin
//! mains over this library.

pub mod commands;
pub mod networks;
pub mod oci;
pub mod shim;
pub mod template;
pub mod vms;
pub mod volumes;

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

// Each subcommand's options are built only when it is the one run (husk
// run's start-up is on every warm start's path).
#[derive(Subcommand)]
#[command(defer = true)]
enum Command {
    /// Boot an appliance (building it first) and exit with its command's
    /// status; with -d, in the background
    Run(Box<commands::run::Args>),
    /// Make a detached appliance as husk run -d would, without starting it
    /// (husk start starts it)
    Create(Box<commands::run::Args>),
    /// Run a command in a detached appliance
    Exec(commands::exec::Args),
    /// List detached appliances
    Ps(commands::ps::Args),
    /// Print a detached appliance's console
    Logs(commands::logs::Args),
    /// Stop detached appliances: SIGTERM, SIGKILL after a grace period
    Stop(commands::stop::StopArgs),
    /// Run detached appliances that have stopped again, as they were started
    Start(commands::start::StartArgs),
    /// Stop detached appliances and start them again
    Restart(commands::start::RestartArgs),
    /// Send a signal to a detached appliance's command
    Kill(commands::stop::KillArgs),
    /// Wait for a detached appliance to stop and print its exit status
    Wait(commands::wait::Args),
    /// Stop every vCPU of detached appliances until husk unpause
    Pause(commands::pause::Args),
    /// Let paused detached appliances run on
    Unpause(commands::pause::Args),
    /// List the processes running in a detached appliance
    Top(commands::top::Args),
    /// List a detached appliance's published ports
    Port(commands::port::Args),
    /// Change detached appliances' restart policy (at once), vCPUs and
    /// memory (a stopped one's, from its next start)
    Update(commands::update::Args),
    /// Copy files and folders between the host and a running detached
    /// appliance (NAME:PATH), as docker cp does
    Cp(commands::cp::Args),
    /// Attach this terminal to a running detached appliance's console
    /// (its input too when it was run with -i); Ctrl-P Ctrl-Q detaches
    Attach(commands::attach::Args),
    /// Show what running detached appliances use: CPU, memory, network,
    /// disk, processes
    Stats(commands::stats::Args),
    /// Remove detached appliances that have stopped
    Rm(commands::rm::Args),
    /// Give a stopped detached appliance another name
    Rename(commands::rename::Args),
    /// Build an appliance or image into a bootable root filesystem image
    Build(commands::build::Args),
    /// Pull registry images again, for what their tags name now, and build
    /// them (husk run and build pull an image once and keep it)
    Pull(commands::pull::Args),
    /// Save a registry's credentials for pulls (checked with the
    /// registry first), where podman login saves them
    Login(commands::login::LoginArgs),
    /// Remove a registry's saved credentials
    Logout(commands::login::LogoutArgs),
    /// Export an appliance as a disk other hypervisors and clouds boot
    /// (OVA, VMDK, VHD, VHDX, qcow2, raw)
    Export(commands::export::Args),
    /// Show what a built image runs (with --files what it holds), or a
    /// detached appliance's state
    Inspect(commands::inspect::Args),
    /// Check appliance files and report every problem with its file:line:column
    Validate(commands::validate::Args),
    /// Build or locate husk's guest kernel
    #[command(subcommand)]
    Kernel(commands::kernel::Command),
    /// Snapshot a running detached appliance; list or remove snapshots
    /// (those husk run keeps for warm starts, and named ones)
    #[command(subcommand)]
    Snapshot(commands::snapshot::Command),
    /// List and remove the built images husk keeps in its cache
    #[command(subcommand)]
    Image(commands::image::Command),
    /// Make, list and remove the named volumes appliances keep data in
    #[command(subcommand)]
    Volume(commands::volume::Command),
    /// Make, list and remove networks appliances reach each other on by
    /// name
    #[command(subcommand)]
    Network(commands::network::Command),
    /// Show the space husk takes, and remove what nothing uses any more
    #[command(subcommand)]
    System(commands::system::Command),
}

/// A recorded `husk run ...` command line (without `husk`) as `husk run`
/// takes it.
pub fn parse_run_args(args: &[String]) -> anyhow::Result<commands::run::Args> {
    let cli = Cli::try_parse_from(std::iter::once("husk").chain(args.iter().map(String::as_str)))?;
    match cli.command {
        Command::Run(args) => Ok(*args),
        _ => anyhow::bail!("not a husk run command line"),
    }
}

/// Whether a `husk run` command line's options (those before `--`) hold
/// `-d`: alone, as `--detach`, or among short flags (`-dit`), up to one
/// that takes a value (`-eDEBUG=1` is `-e` alone).
pub fn says_detach(args: &[std::ffi::OsString]) -> bool {
    const TAKE_VALUES: &str = "euwmpvl";
    args.iter()
        .map(|a| a.to_string_lossy())
        .take_while(|a| a != "--")
        .any(|a| match a.strip_prefix('-') {
            Some(rest) if !rest.starts_with('-') => rest
                .chars()
                .take_while(|c| !TAKE_VALUES.contains(*c))
                .any(|c| c == 'd'),
            _ => a == "--detach",
        })
}

/// `husk`'s main.
pub fn husk_main() -> ExitCode {
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
    // husk create takes husk run -d's flags, those that need -d included
    // (and -d itself, which it needs not).
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "create") && !says_detach(&argv[2..]) {
        argv.insert(2, "-d".into());
    }
    let cli = Cli::parse_from(argv);
    let result = match cli.command {
        Command::Run(args) => commands::run::run(*args, started),
        Command::Create(args) => commands::run::create(*args),
        Command::Exec(args) => commands::exec::run(args),
        Command::Ps(args) => commands::ps::run(args),
        Command::Logs(args) => commands::logs::run(args),
        Command::Stop(args) => commands::stop::stop(args),
        Command::Kill(args) => commands::stop::kill(args),
        Command::Start(args) => commands::start::start(args),
        Command::Restart(args) => commands::start::restart(args),
        Command::Wait(args) => commands::wait::run(args),
        Command::Pause(args) => commands::pause::pause(args),
        Command::Unpause(args) => commands::pause::unpause(args),
        Command::Top(args) => commands::top::run(args),
        Command::Port(args) => commands::port::run(args),
        Command::Update(args) => commands::update::run(args),
        Command::Cp(args) => commands::cp::run(args),
        Command::Attach(args) => commands::attach::run(args),
        Command::Stats(args) => commands::stats::run(args),
        Command::Rm(args) => commands::rm::run(args),
        Command::Rename(args) => commands::rename::run(args),
        Command::Build(args) => commands::build::run(args),
        Command::Pull(args) => commands::pull::run(args),
        Command::Login(args) => commands::login::login(args),
        Command::Logout(args) => commands::login::logout(args),
        Command::Export(args) => commands::export::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Validate(args) => commands::validate::run(args),
        Command::Kernel(cmd) => commands::kernel::run(cmd),
        Command::Snapshot(cmd) => commands::snapshot::run(cmd),
        Command::Image(cmd) => commands::image::run(cmd),
        Command::Volume(cmd) => commands::volume::run(cmd),
        Command::Network(cmd) => commands::network::run(cmd),
        Command::System(cmd) => commands::system::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("husk: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn every_subcommand_keeps_its_own_help_though_its_options_are_built_late() {
        let cli = super::Cli::command();
        for sub in cli.get_subcommands() {
            let name = sub.get_name();
            let about = sub.get_about().expect("every subcommand says what it does");
            let help = match super::Cli::try_parse_from(["husk", name, "--help"]) {
                Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => e.to_string(),
                _ => panic!("husk {name} --help should print its help"),
            };
            assert_eq!(
                help.lines().next(),
                Some(about.to_string().as_str()),
                "{name}"
            );
            assert!(
                help.contains("Options:"),
                "husk {name}: its options are listed"
            );
        }
    }

    #[test]
    fn detach_is_found_among_short_flags_but_not_in_values() {
        let says = |line: &str| {
            let args: Vec<std::ffi::OsString> = line.split(' ').map(Into::into).collect();
            super::says_detach(&args)
        };
        for yes in ["-d app", "--detach app", "-it -dP app", "-dp 80 app"] {
            assert!(says(yes), "{yes}");
        }
        for no in [
            "app",
            "-eDEBUG=1 app",
            "-it app",
            "-v /d:/d app",
            "app -- -d",
            "--name d app",
        ] {
            assert!(!says(no), "{no}");
        }
    }
}
