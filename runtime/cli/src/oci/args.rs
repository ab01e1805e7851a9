//! husk-runtime's command line: runc's, as its callers use it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use super::{cgroup, log, DEFAULT_ROOT};

#[derive(Parser)]
#[command(
    name = "husk-runtime",
    version = concat!(env!("CARGO_PKG_VERSION"), "\nspec: 1.0.2"),
    about = "An OCI runtime with runc's command line: each container a husk micro-VM"
)]
pub(super) struct Cli {
    /// Where containers' state lives
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    pub(super) root: PathBuf,
    /// Also write errors to this file
    #[arg(long, global = true)]
    pub(super) log: Option<PathBuf>,
    /// The format of --log: text or json
    #[arg(long, global = true, default_value = "text")]
    pub(super) log_format: log::Format,
    /// cgroupsPath is systemd's slice:prefix:name: the container's cgroup
    /// is a scope systemd makes
    #[arg(long, global = true)]
    pub(super) systemd_cgroup: bool,
    /// Accepted for runc's callers
    #[arg(long, global = true)]
    pub(super) rootless: Option<String>,
    /// More detail in the log
    #[arg(long, global = true)]
    pub(super) debug: bool,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand)]
pub(super) enum Command {
    /// Boot a container's VM; its process waits for start
    Create(CreateArgs),
    /// Start the process of a created container
    Start { id: String },
    /// The container's state as OCI state JSON
    State { id: String },
    /// Send a signal to the container's process
    Kill {
        /// Signal every process (the same here: the VM is the container)
        #[arg(short, long)]
        all: bool,
        id: String,
        /// A name (TERM, SIGTERM) or number
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Remove a stopped (or, with --force, any) container
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// List containers
    List {
        /// table or json
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Only the ids
        #[arg(short, long)]
        quiet: bool,
    },
    /// The host processes of a container
    Ps {
        /// table or json
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
    },
    /// What this runtime supports, as JSON
    Features,
    /// Freeze every process of a running container (its cgroup in the VM)
    Pause { id: String },
    /// Thaw a paused container
    Resume { id: String },
    /// Change the limits of a container's cgroup in its VM (within the
    /// VM's size, fixed when it boots)
    Update {
        /// OCI linux resources as JSON: a file, or - for stdin
        #[arg(short, long)]
        resources: Option<PathBuf>,
        id: String,
    },
    /// Run another process in a running container
    Exec(ExecArgs),
    /// The container's figures as JSON lines: one with --stats, else one
    /// each --interval (and an oom event at each OOM kill) until it stops
    Events {
        /// Print the figures once
        #[arg(long)]
        stats: bool,
        /// Between two lines, as 5s, 500ms or 1m
        #[arg(long, default_value = "5s", value_parser = cgroup::parse_interval)]
        interval: Duration,
        id: String,
    },
}

#[derive(clap::Args)]
pub(super) struct CreateArgs {
    /// The bundle: config.json and the root it names
    #[arg(short, long, default_value = ".")]
    pub(super) bundle: PathBuf,
    /// Write the container's pid (its VM's keeper) here
    #[arg(long)]
    pub(super) pid_file: Option<PathBuf>,
    /// Send the master of the process's terminal here (SCM_RIGHTS)
    #[arg(long)]
    pub(super) console_socket: Option<PathBuf>,
    /// Accepted for runc's callers (the root is the VM's own)
    #[arg(long)]
    pub(super) no_pivot: bool,
    /// Accepted for runc's callers
    #[arg(long)]
    pub(super) no_new_keyring: bool,
    /// Descriptors beyond stdio to pass: none can reach a VM (0 only)
    #[arg(long, default_value_t = 0)]
    pub(super) preserve_fds: u32,
    pub(super) id: String,
}

#[derive(clap::Args)]
pub(super) struct ExecArgs {
    /// The process as OCI process JSON (instead of COMMAND)
    #[arg(short, long)]
    pub(super) process: Option<PathBuf>,
    /// Return once it started; its exit status is the pid file's process's
    #[arg(short, long)]
    pub(super) detach: bool,
    /// Write the pid of the process standing for it here
    #[arg(long)]
    pub(super) pid_file: Option<PathBuf>,
    /// Send the master of its terminal here (SCM_RIGHTS)
    #[arg(long)]
    pub(super) console_socket: Option<PathBuf>,
    /// Give it a terminal (with COMMAND)
    #[arg(short, long)]
    pub(super) tty: bool,
    /// Working directory (with COMMAND)
    #[arg(long)]
    pub(super) cwd: Option<String>,
    /// KEY=VALUE (with COMMAND)
    #[arg(short, long)]
    pub(super) env: Vec<String>,
    /// uid[:gid] (with COMMAND)
    #[arg(short, long)]
    pub(super) user: Option<String>,
    /// Accepted for runc's callers
    #[arg(long)]
    pub(super) cgroup: Option<String>,
    /// Accepted for runc's callers (none can reach a VM)
    #[arg(long, default_value_t = 0)]
    pub(super) preserve_fds: u32,
    pub(super) id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub(super) command: Vec<String>,
}
