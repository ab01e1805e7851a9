//! `husk run`: build (or find in the cache) an appliance's image, boot it
//! on husk's VMM, and exit with its command's status; or boot a kernel and
//! disks given by flags.
//!
//! Exit status: the appliance command's own (0-255) as the guest reports
//! it on the control port; 124 when `--timeout` passed; 125 when the guest
//! stopped without reporting a status (a kernel panic, or an init that does
//! not report); 1 when husk itself failed.

use std::fs::File;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use appliance_spec::{ImageFormat, KernelRef};
use builder::kernel;
use husk_init::config::Overrides;
use vmm::vsock::{HostVsock, VsockConfig, MAX_CONNECTIONS};
use vmm::{DiskAccess, DiskConfig, VmConfig, VmExit};

use super::target::{boot_cmdline, Target};
use crate::vms::keeper;

mod detached;
mod host_config;
pub mod named;
mod net;
mod recorded;
mod service;
mod shares;
mod tuning;
pub mod warm;
use detached::{detach, detached_vsock, handed_down, keep, BuiltImage};
pub use detached::{in_new_session, launch_keeper, spawn_keeper, start_keeper, KeeperStdio};
use net::{attach_net, parse_net, plan_net, NetMode, PlannedNet};
pub(crate) use net::{network_alias, random_mac, Member};
pub(crate) use recorded::{with_network_at, with_option, without_network};
use vmm_sys_util::terminal::Terminal;

pub const EXIT_TIMEOUT: u8 = 124;
pub const EXIT_NO_STATUS: u8 = 125;
/// The guest's vsock CID when the appliance names none.
const DEFAULT_CID: u32 = 3;
/// Networks a detached appliance can be connected to while it runs
/// (beyond those it booted with): each is an empty virtio-mmio slot, an
/// interrupt and three register reads at boot.
const NET_SLOTS: u8 = 4;

#[derive(clap::Args)]
pub struct Args {
    /// An appliance file (or a folder holding appliance.toml) or an image
    /// reference (oci:DIR[:TAG], oci-archive:PATH, docker-archive:PATH),
    /// built first (from the cache when nothing changed), or dir:PATH, a
    /// folder booted as the root as it is (through virtio-fs). Without one,
    /// husk boots --kernel with the --disk and --initrd given.
    target: Option<String>,
    /// The command to run instead of the appliance's, after -- (an image's
    /// ENTRYPOINT stays, and these replace its CMD, as with docker)
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
    /// Run this instead of the image's ENTRYPOINT (and its CMD): a program,
    /// or a JSON array of words; "" for none
    #[arg(long, value_name = "PROGRAM|JSON", value_parser = super::env::parse_entrypoint)]
    entrypoint: Option<super::env::Entrypoint>,
    /// Set an environment variable for the appliance's command; KEY alone
    /// takes husk's own value of KEY (left out when husk has none)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE|KEY")]
    env: Vec<String>,
    /// Read environment variables from a file: a KEY=VALUE or KEY per line,
    /// blank lines and lines starting with # skipped (before -e's)
    #[arg(long, value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Run the command as this user (user, uid, user:group or uid:gid,
    /// looked up in the image; default: the appliance's run.user)
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Add a supplementary group (a name in the image's /etc/group, or a
    /// gid) to the command and to every process started in the guest
    /// later (husk exec, health checks)
    #[arg(long, value_name = "GROUP", value_parser = parse_group)]
    group_add: Vec<String>,
    /// The command's working directory in the guest, an absolute path,
    /// made when missing (default: the appliance's run.workdir)
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// Kernel: an ELF vmlinux with a PVH entry, or a bzImage (default:
    /// the appliance's vm.kernel, else husk's kernel)
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// An initramfs for the guest
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// A disk image, attached after the appliance's own disks as /dev/vdX;
    /// append ",ro" for read-only, ",overlay" to keep the guest's writes for
    /// this run only (the file is not changed)
    #[arg(long = "disk", value_name = "PATH[,ro|,overlay]")]
    disks: Vec<String>,
    /// Extra kernel command-line arguments
    #[arg(long, default_value = "")]
    cmdline: String,
    /// vCPUs, 1 to 32 (default: the appliance's vm.cpus, else 1)
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=32))]
    cpus: Option<u8>,
    /// Guest memory: a size such as 256MiB or 256m, or a number of MiB
    /// (default: the appliance's vm.memory, else 128MiB)
    #[arg(short = 'm', long, value_name = "SIZE")]
    memory: Option<String>,
    /// Stop the guest after this many seconds (exit status 124)
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// The guest's network: none; user (user-mode through passt, no root
    /// needed; the default for image references); tap:NAME (a host tap
    /// device), optionally with the guest's ,mac=MAC ,ip=ADDR/PREFIX
    /// ,gateway=ADDR ,mtu=N (ip and gateway once per IP family, IPv4 and
    /// IPv6). A husk network's name (husk network create) adds an
    /// interface on it, beside the others (by default the user-mode
    /// network for its way out, unless it is --internal); repeat --net
    /// for several. Default for an appliance file: its own [[vm.net]].
    #[arg(
        long,
        visible_alias = "network",
        value_name = "none|user|NETWORK|tap:NAME[,ip=..]",
        value_parser = parse_net
    )]
    net: Vec<NetMode>,
    /// Another name the appliance answers to on its husk networks (its
    /// --name is one)
    #[arg(long, value_name = "NAME", value_parser = net::network_alias)]
    network_alias: Vec<String>,
    /// Publish a guest port on the host through the user-mode network
    /// (implies --net user)
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[HOST_IP:]HOST_PORT[-LAST]:GUEST_PORT[-LAST][/tcp|/udp]",
        value_parser = net::Published::parse
    )]
    publish: Vec<net::Published>,
    /// Publish every port the image exposes (its EXPOSE, the appliance's
    /// run.expose, --expose) on a free host port
    #[arg(short = 'P', long)]
    publish_all: bool,
    /// A port (or range) the appliance exposes, beside its image's: -P
    /// publishes it
    #[arg(long, value_name = "PORT[-LAST][/tcp|/udp]", value_parser = net::parse_expose)]
    expose: Vec<Vec<appliance_spec::ExposedPort>>,
    /// The MAC address of the appliance's first interface
    #[arg(long, value_name = "MAC")]
    mac_address: Option<appliance_spec::MacAddr>,
    /// Taken for docker's scripts: linux/amd64 (husk's guests are
    /// x86_64); any other is refused
    #[arg(long, value_name = "linux/amd64", value_parser = parse_platform)]
    platform: Option<String>,
    /// With -d: write the appliance's name (what husk's commands take
    /// for it) to FILE, which must not exist yet
    #[arg(long, value_name = "FILE", requires = "detach")]
    cidfile: Option<PathBuf>,
    /// Give the guest a vsock device whose host side is this Unix socket
    /// (Firecracker's hybrid vsock: a host program connects and writes
    /// "CONNECT <port>\n"; the guest reaches host port P at PATH_P). The
    /// guest's CID is the appliance's vm.vsock.cid, else 3.
    #[arg(long, value_name = "PATH")]
    vsock: Option<PathBuf>,
    /// Share a host folder (a path: /abs or ./rel; as root also a single
    /// file) or a named volume (made on first use, and filled from the
    /// image unless :nocopy) with the guest at GUEST, through virtiofsd;
    /// the guest's writes land on the host. ":ro" makes it read-only.
    /// "-v /GUEST" alone: a new anonymous volume there (as the image's
    /// VOLUMEs get), which a foreground run removes when it ends and a
    /// detached appliance keeps until husk rm -v
    #[arg(
        short = 'v',
        long = "volume",
        value_name = "HOST|VOLUME:GUEST[:ro]",
        value_parser = shares::parse_volume
    )]
    volumes: Vec<shares::VolumeArg>,
    /// Mount what detached appliance NAME has shared (its folders and
    /// volumes, anonymous ones too), at the same paths; :ro makes them
    /// read-only here. Read once: a detached appliance keeps them
    #[arg(long, value_name = "NAME[:ro|:rw]")]
    volumes_from: Vec<String>,
    /// A bind mount, volume or tmpfs in docker's long form:
    /// type=bind,source=PATH,target=/PATH[,readonly];
    /// type=volume[,source=NAME],target=/PATH[,volume-nocopy];
    /// type=tmpfs,target=/PATH[,tmpfs-size=64m][,tmpfs-mode=1777]
    #[arg(long, value_name = "type=...,target=/PATH", value_parser = shares::parse_mount)]
    mount: Vec<shares::MountArg>,
    /// A detached appliance's anonymous volumes, as its `husk run -d`
    /// named them: its keeper's command line carries them, so every start
    /// of it mounts the same ones
    #[arg(long, value_name = "NAME:/PATH", hide = true, value_parser = shares::parse_anonymous)]
    anonymous_volume: Vec<(String, String)>,
    /// Mount a tmpfs at PATH in the guest, with mount options (size=64m,
    /// mode=1777, uid=, gid=, exec, ro, ...; nosuid, nodev, noexec unless
    /// they say otherwise), as docker's --tmpfs
    #[arg(long, value_name = "PATH[:OPTIONS]", value_parser = shares::parse_tmpfs)]
    tmpfs: Vec<husk_init::config::TmpfsMount>,
    /// Run in the background: print the appliance's name and return once
    /// its command started (see husk ps, logs, exec, stop, rm)
    #[arg(short = 'd', long)]
    detach: bool,
    /// The detached appliance's name (default: husk- and 6 hex digits)
    #[arg(long, requires = "detach")]
    name: Option<String>,
    /// A label of the detached appliance (KEY=VALUE, or KEY for an empty
    /// value), for husk ps --filter label=KEY[=VALUE] and husk inspect
    /// (a foreground run, which ps does not list, keeps them nowhere)
    #[arg(short = 'l', long, value_name = "KEY[=VALUE]")]
    label: Vec<String>,
    /// Labels from a file, a KEY=VALUE a line (blank lines and # comments
    /// skipped), before those of --label
    #[arg(long, value_name = "FILE")]
    label_file: Vec<PathBuf>,
    /// With -d: return once the appliance's [run.ready] check passes (else
    /// its health check)
    #[arg(long, requires = "detach")]
    wait_ready: bool,
    /// With -d: remove the appliance (its folder and log) when it stops
    /// (a run in the foreground leaves nothing anyway)
    #[arg(long)]
    rm: bool,
    /// Taken as docker's -i and -t are: in the foreground the guest's
    /// console is always husk's stdin and stdout, raw when stdin is a
    /// terminal; with -d its output goes to the log, and -i keeps its
    /// input open for husk attach (as docker run -dit)
    #[arg(short = 'i', long)]
    interactive: bool,
    #[arg(short = 't', long, hide = true)]
    tty: bool,
    /// Taken as docker's --init is: husk's init is always PID 1 and the
    /// command's parent, forwarding signals to it and reaping orphans
    #[arg(long)]
    init: bool,
    /// With -d: start the command again when it ends: no, always,
    /// unless-stopped, or on-failure[:MAX-RESTARTS] (a status other than
    /// 0); not after husk stop, or husk kill with KILL, TERM, INT or QUIT
    /// (default: unless-stopped for an appliance whose run.on_exit is
    /// "restart", else no)
    #[arg(
        long,
        value_name = "POLICY",
        requires = "detach",
        conflicts_with_all = ["rm", "hold"]
    )]
    restart: Option<crate::vms::restart::Policy>,
    #[command(flatten)]
    service: service::ServiceArgs,
    #[command(flatten)]
    names: net::NameArgs,
    /// The guest's hostname (default: the appliance's)
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// Mount the root filesystem read-only
    #[arg(long)]
    read_only: bool,
    /// A resource limit of the command and of everything started in the
    /// guest later (husk exec), as docker's: nofile=1024:65536,
    /// memlock=-1 (default: nofile=1024:524288, as docker's)
    #[arg(long, value_name = "NAME=SOFT[:HARD]", value_parser = tuning::parse_ulimit)]
    ulimit: Vec<agent::Rlimit>,
    /// Set a kernel parameter in the guest before the command starts
    /// (any: the guest's kernel is the VM's own), as net.core.somaxconn=1024
    #[arg(long, value_name = "KEY=VALUE", value_parser = tuning::parse_sysctl)]
    sysctl: Vec<String>,
    /// The size of /dev/shm (64m, 1g; default: half the guest's memory)
    #[arg(long, value_name = "SIZE", value_parser = tuning::parse_shm_size)]
    shm_size: Option<u64>,
    /// Take a capability from every program started in the guest (NET_RAW,
    /// SYS_ADMIN, ..., ALL): the VM's root has them all unless dropped
    #[arg(long, value_name = "CAP", value_parser = tuning::parse_capability)]
    cap_drop: Vec<Option<caps::Capability>>,
    /// Keep a capability --cap-drop would take (--cap-drop ALL --cap-add
    /// NET_BIND_SERVICE); with no drop there is nothing to add
    #[arg(long, value_name = "CAP", value_parser = tuning::parse_capability)]
    cap_add: Vec<Option<caps::Capability>>,
    /// Taken as docker's is: the VM's root already has every capability
    /// and every device of the VM
    #[arg(long, conflicts_with = "cap_drop")]
    privileged: bool,
    /// no-new-privileges: every program started in the guest runs with
    /// no_new_privs; label=, apparmor= and seccomp=unconfined are taken
    #[arg(long, value_name = "OPT", value_parser = tuning::parse_security_opt)]
    security_opt: Vec<Option<bool>>,
    /// Pull a registry image: missing, always (what its tag names now) or
    /// never
    #[arg(long, value_enum, default_value_t)]
    pull: super::target::Pull,
    /// With -d: boot and set the guest up, but start no command until one
    /// comes through the keeper's control socket (husk-runtime's create
    /// and start)
    #[arg(long, requires = "detach", hide = true)]
    hold: bool,
    /// The VM's processes stay in the cgroup husk starts in, which its
    /// caller made and limits (husk-runtime's container cgroup): the jail
    /// makes none of its own
    #[arg(long, hide = true)]
    keep_cgroup: bool,
    /// Empty virtio-mmio slots for network interfaces, which also puts
    /// the interfaces the VM boots with into slots (a detached run's VM
    /// has 4, a foreground one none): for the benches that weigh them
    #[arg(long, value_name = "N", hide = true)]
    net_slots: Option<u8>,
    /// Boot the kernel even where a snapshot of this appliance is cached,
    /// and take none (by default the first run of an appliance snapshots
    /// it and later runs restore that: see husk snapshot)
    #[arg(long)]
    cold: bool,
    /// Restore a snapshot husk snapshot create took of a running appliance
    /// and go on running it: the appliance, its command and its VM are the
    /// snapshot's; -d, --name, --rm, -p, --timeout and the like are this
    /// run's
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with_all = [
            "target", "command", "env", "env_file", "user", "workdir", "kernel", "initrd",
            "disks", "cmdline", "cpus", "memory", "net", "vsock", "volumes", "hostname",
            "read_only", "hold", "cold", "add_host", "dns", "dns_search", "dns_option", "tmpfs",
        ]
    )]
    from_snapshot: Option<String>,
    /// `-p` replaces every port the run would publish (a restore's own
    /// ports instead of those of the run its snapshot was taken of).
    #[arg(skip)]
    replace_ports: bool,
    /// Print when each boot phase was reached, on stderr
    #[arg(long)]
    timings: bool,
    /// Seccomp filters on the VMM's threads: kill (a refused system call
    /// ends husk with SIGSYS, naming the call), log (the kernel logs it and
    /// lets it through), off
    #[arg(long, value_enum, default_value_t = Seccomp::Kill)]
    seccomp: Seccomp,
    /// Run the VMM in a jail: its own namespaces, an empty root, an
    /// unprivileged user, no capabilities, a cgroup (default when root)
    #[arg(long, overrides_with = "no_jail")]
    jail: bool,
    /// Run the VMM without the jail
    #[arg(long)]
    no_jail: bool,
    /// The user the jailed VMM runs as
    #[arg(long, value_name = "UID:GID", default_value = "65534:65534")]
    jail_user: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Seccomp {
    Kill,
    Log,
    Off,
}

/// `--timeout SECS`: a finite number of seconds, more than 0.
fn parse_timeout(arg: &str) -> Result<Duration, String> {
    let secs: f64 = arg
        .parse()
        .map_err(|_| format!("{arg:?} is not a number of seconds"))?;
    if secs <= 0.0 {
        return Err(format!("{arg}: give a time longer than 0 seconds"));
    }
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d <= MAX_TIMEOUT)
        .ok_or_else(|| {
            format!(
                "{arg}: give a finite time of at most {} seconds",
                MAX_TIMEOUT.as_secs()
            )
        })
}

/// A year: longer is surely a mistake, and still fits every clock.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

fn disk(arg: &str) -> DiskConfig {
    let (path, access) = if let Some(path) = arg.strip_suffix(",ro") {
        (path, DiskAccess::ReadOnly)
    } else if let Some(path) = arg.strip_suffix(",overlay") {
        (path, DiskAccess::Overlay)
    } else {
        (arg, DiskAccess::ReadWrite)
    };
    DiskConfig {
        path: path.into(),
        access,
        upper: None,
    }
}

/// What the run boots, from the target (if any) and the flags.
struct Plan {
    config_kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    disks: Vec<DiskConfig>,
    /// The kernel command line every run of this VM shares.
    cmdline: String,
    /// husk's init's parameters for this run only (`husk.run=`,
    /// `husk.net=`, `husk.fs=`): on the kernel command line of a cold
    /// boot, handed over at the snapshot point of a warm one.
    params: Vec<String>,
    cpus: u8,
    memory_mib: u64,
    net: Vec<PlannedNet>,
    /// Host ports chosen for ports published without one (`-p 80`).
    chosen_ports: Vec<u16>,
    /// The guest's CID and the host socket of its vsock device.
    vsock: Option<(u32, PathBuf)>,
    /// Shared folders, the root first when it is one.
    shares: Vec<shares::PlannedShare>,
    /// The anonymous volumes this run named (`--anonymous-volume` for a
    /// detached appliance's keeper to take).
    new_anonymous: Vec<(String, String)>,
    /// The image has husk's init, which sets the network up from the
    /// kernel command line.
    husk_init: bool,
    /// The built image of the target, if any, and its appliance file.
    image: Option<BuiltImage>,
    appliance: Option<Box<appliance_spec::Appliance>>,
    /// What this run changes of the image's run configuration.
    overrides: husk_init::config::Overrides,
}

fn plan(args: &Args) -> anyhow::Result<Plan> {
    let mut plan = Plan {
        config_kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        disks: Vec::new(),
        cmdline: String::new(),
        params: Vec::new(),
        cpus: args.cpus.unwrap_or(1),
        memory_mib: match &args.memory {
            Some(m) => super::memory_mib(m)?,
            None => 128,
        },
        net: Vec::new(),
        chosen_ports: Vec::new(),
        vsock: args.vsock.clone().map(|uds| (DEFAULT_CID, uds)),
        shares: Vec::new(),
        new_anonymous: Vec::new(),
        husk_init: false,
        image: None,
        appliance: None,
        overrides: husk_init::config::Overrides::default(),
    };
    let Some(target) = &args.target else {
        if !args.command.is_empty() || !args.env.is_empty() || !args.volumes.is_empty() {
            anyhow::bail!("a command after --, -e and -v need an appliance or image to run");
        }
        (plan.net, plan.chosen_ports) = plan_net(args, None, false, &[])?;
        plan.disks = args.disks.iter().map(|d| disk(d)).collect();
        plan.cmdline = args.cmdline.clone();
        return Ok(plan);
    };
    let target = Target::parse(target)?;
    let built = match handed_down()? {
        Some(image) => image,
        None => {
            // Only where the user ran it: a detached appliance's start
            // again (its keeper) uses what is here.
            if keeper::from_env(keeper::KEEPER_ENV).is_none() {
                target.pull(args.pull)?;
            }
            let b = target.build()?;
            BuiltImage {
                path: b.path,
                format: b.format,
            }
        }
    };
    plan.image = Some(built.clone());
    let appliance = target.appliance();
    let exposed = net::exposed(args, &built.path)?;
    (plan.net, plan.chosen_ports) = plan_net(args, appliance, appliance.is_none(), &exposed)?;
    plan.husk_init = true;
    let readonly = args.read_only || appliance.is_some_and(|a| a.rootfs.readonly);
    if let Some(folder) = target.source().folder() {
        plan.shares.push(shares::root(folder, readonly)?);
    }
    let mut cmdline = vec!["quiet".to_string(), boot_cmdline(built.format, readonly)];
    match built.format {
        ImageFormat::Ext4 => {
            // The cached image stays as built: a writable root keeps this
            // run's writes in an overlay that ends with the VM (a
            // detached appliance's are kept: detached::keep_root).
            plan.disks.push(DiskConfig {
                path: built.path.clone(),
                access: if readonly {
                    DiskAccess::ReadOnly
                } else {
                    DiskAccess::Overlay
                },
                upper: None,
            });
        }
        ImageFormat::Initramfs => {
            if args.initrd.is_some() {
                anyhow::bail!("--initrd: this appliance's root filesystem is its initramfs");
            }
            plan.initrd = Some(built.path.clone());
        }
    }
    if let Some(a) = appliance {
        if let Some(v) = &a.vm.vsock {
            plan.vsock = Some((v.cid, args.vsock.clone().unwrap_or_else(|| v.uds.clone())));
        }
        if args.cpus.is_none() {
            plan.cpus = u8::try_from(a.vm.cpus).context("vm.cpus")?;
        }
        if args.memory.is_none() {
            plan.memory_mib = a.vm.memory.0 >> 20;
        }
        if args.kernel.is_none() {
            if let KernelRef::Path(p) = &a.vm.kernel {
                plan.config_kernel = Some(p.clone());
            }
        }
        if plan.initrd.is_none() {
            plan.initrd = a.vm.initrd.clone();
        }
        plan.disks.extend(a.vm.disks.iter().map(|d| DiskConfig {
            path: d.path.clone(),
            access: if d.readonly {
                DiskAccess::ReadOnly
            } else {
                DiskAccess::ReadWrite
            },
            upper: None,
        }));
        cmdline.extend(a.vm.cmdline.clone());
        plan.shares.extend(shares::from_spec(&a.vm.shares)?);
    }
    plan.shares.extend(shares::resolve(&args.volumes)?);
    plan.shares
        .extend(shares::recorded_anonymous(&args.anonymous_volume)?);
    // A detached appliance's keeper and VM child mount the anonymous
    // volumes its command line records, and no new ones: as a docker
    // container, it keeps those it was made with.
    if keeper::from_env(keeper::KEEPER_ENV).is_none() && keeper::from_env(keeper::VM_ENV).is_none()
    {
        let mounted: Vec<&str> = plan
            .shares
            .iter()
            .map(|s| s.guest.as_str())
            .chain(args.tmpfs.iter().map(|t| t.path.as_str()))
            .collect();
        let image_volumes = image_run_config(&built.path)?.map(|r| r.volumes);
        let paths =
            shares::anonymous_paths(&args.volumes, &image_volumes.unwrap_or_default(), &mounted);
        let make = match args.detach {
            true => shares::MakeAnonymous::NameOnly,
            false => shares::MakeAnonymous::ForThisRun,
        };
        let made = shares::anonymous(&paths, make)?;
        plan.new_anonymous = made
            .iter()
            .filter_map(|s| Some((s.volume.clone()?, s.guest.clone())))
            .collect();
        plan.shares.extend(made);
    }
    shares::check_unique(&plan.shares)?;
    plan.disks.extend(args.disks.iter().map(|d| disk(d)));
    let overrides = Overrides {
        command: (!args.command.is_empty()).then(|| args.command.clone()),
        entrypoint: args.entrypoint.clone().map(|e| e.0),
        env: super::env::gather(&args.env, &args.env_file)?,
        hold: args.hold,
        hostname: args.hostname.clone(),
        user: args.user.clone(),
        groups: args.group_add.clone(),
        workdir: args.workdir.clone(),
        stop_signal: args.service.stop_signal.map(|s| s.0),
        ulimits: args.ulimit.clone(),
        sysctls: args.sysctl.clone(),
        shm_size: args.shm_size,
        capabilities: tuning::capabilities(&args.cap_add, &args.cap_drop),
        no_new_privileges: args.security_opt.iter().flatten().last() == Some(&true),
    };
    if let Some(h) = &args.hostname {
        check_hostname(h)?;
    }
    if let Some(user) = &args.user {
        check_user(user)?;
    }
    if let Some(dir) = &args.workdir {
        if !dir.starts_with('/') || dir.contains('\0') {
            anyhow::bail!("-w {dir:?}: the working directory must be an absolute path");
        }
    }
    if !overrides.is_empty() {
        plan.params.push(overrides.to_param());
    }
    plan.overrides = overrides;
    if !args.cmdline.is_empty() {
        cmdline.push(args.cmdline.clone());
    }
    plan.cmdline = cmdline.join(" ");
    plan.appliance = appliance.cloned().map(Box::new);
    Ok(plan)
}

/// A detached run's labels: the image's LABELs (`image`, those its build
/// recorded), then `--label-file`s' lines, then `--label`s, a later value
/// of a key replacing an earlier one, as docker's.
fn labels(
    args: &Args,
    image: Option<&std::path::Path>,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut labels = match image {
        Some(image) => image_run_config(image)?
            .map(|r| r.labels)
            .unwrap_or_default(),
        None => std::collections::BTreeMap::new(),
    };
    labels.extend(label_file_entries(&args.label_file)?);
    for entry in &args.label {
        labels.extend([label(entry).map_err(|e| anyhow::anyhow!("--label: {e}"))?]);
    }
    Ok(labels)
}

/// The labels of `--label-file`s, in order: a `KEY=VALUE` a line, blank
/// lines and `#` comments skipped; an error names the file and line.
fn label_file_entries(files: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("--label-file {}", file.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                out.push(
                    label(line)
                        .map_err(|e| anyhow::anyhow!("{}:{}: {e}", file.display(), n + 1))?,
                );
            }
        }
    }
    Ok(out)
}

/// One label: `KEY=VALUE`, or `KEY` for an empty value.
fn label(entry: &str) -> Result<(String, String), String> {
    let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
    if key.is_empty() || key.chars().any(char::is_whitespace) {
        return Err(format!("{entry:?} is not KEY=VALUE"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// What the guest's init will run: the image's run configuration under
/// this run's overrides, as init applies them (`None` for an image husk
/// did not build); docker inspect's `Config` of a detached appliance.
fn run_config(plan: &Plan) -> anyhow::Result<Option<husk_init::config::RunConfig>> {
    let Some(image) = &plan.image else {
        return Ok(None);
    };
    let Some(mut run) = image_run_config(&image.path)? else {
        return Ok(None);
    };
    run.apply(&plan.overrides)?;
    Ok(Some(run))
}

/// The run configuration the build of the image at `image` recorded
/// beside it; `None` for an image husk did not build.
fn image_run_config(
    image: &std::path::Path,
) -> anyhow::Result<Option<husk_init::config::RunConfig>> {
    if !image.with_file_name("run.json").exists() {
        return Ok(None);
    }
    let run = builder::images::run_config_of(image).map_err(|e| anyhow::anyhow!(e))?;
    Ok(Some(run))
}

/// `-u`: a name or number, and optionally `:` and a group's; the image's
/// own files resolve it (init says when one is unknown).
/// `--group-add`'s value: a gid, or one word naming a group.
fn parse_group(arg: &str) -> Result<String, String> {
    let numeric = !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit());
    let word = !arg.is_empty()
        && !arg
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == ',');
    match (numeric, word) {
        (true, _) if arg.parse::<u32>().is_err() => Err(format!("gid {arg} is beyond 4294967295")),
        (_, true) => Ok(arg.to_string()),
        _ => Err("write one group: a name or a gid".into()),
    }
}

fn check_user(user: &str) -> anyhow::Result<()> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && !p
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ':')
    };
    let ok = match user.split_once(':') {
        Some((u, g)) => part_ok(u) && part_ok(g),
        None => part_ok(user),
    };
    if !ok {
        anyhow::bail!("-u {user:?}: write USER, UID, USER:GROUP or UID:GID");
    }
    Ok(())
}

/// A hostname as the kernel takes it: 1 to 64 bytes of letters, digits,
/// '-' and '.'.
fn check_hostname(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !ok {
        anyhow::bail!("--hostname {name:?}: use 1 to 64 letters, digits, '-' and '.'");
    }
    Ok(())
}

/// `--platform`: x86_64's names, as docker's and OCI's write them.
fn parse_platform(s: &str) -> Result<String, String> {
    let arch = s.strip_prefix("linux/").unwrap_or(s);
    match arch {
        "amd64" | "x86_64" | "x86-64" => Ok(s.to_string()),
        _ => Err(format!("husk runs x86_64 guests: linux/amd64, not {s:?}")),
    }
}

/// --mount's are -v's and --tmpfs's in another form, taken after them.
pub(super) fn merge_mounts(args: &mut Args) {
    for mount in std::mem::take(&mut args.mount) {
        match mount {
            shares::MountArg::Share(v) => args.volumes.push(v),
            shares::MountArg::Tmpfs(t) => args.tmpfs.push(t),
        }
    }
}

/// What --volumes-from names, as -v's before this run's own (call after
/// [`merge_mounts`]).
fn take_volumes_from(args: &mut Args) -> anyhow::Result<()> {
    let mut taken = shares::all_volumes_from(args)?;
    args.volumes_from.clear();
    taken.append(&mut args.volumes);
    args.volumes = taken;
    Ok(())
}

/// `husk create`: `husk run -d` up to the keeper's start.
pub fn create(mut args: Args) -> anyhow::Result<ExitCode> {
    merge_mounts(&mut args);
    take_volumes_from(&mut args)?;
    args.detach = true;
    if args.from_snapshot.is_some() {
        anyhow::bail!("--from-snapshot: husk create makes an appliance to boot; husk run -d --from-snapshot goes on from a snapshot");
    }
    detached::detach(&args, detached::Then::Record)
}

pub fn run(mut args: Args, started: Instant) -> anyhow::Result<ExitCode> {
    merge_mounts(&mut args);
    take_volumes_from(&mut args)?;
    let (args, named) = match args.from_snapshot.clone() {
        Some(name) => {
            let (args, named) = named::resolve(args, &name)?;
            (args, Some(named))
        }
        None => (args, None),
    };
    let vm_child = keeper::from_env(keeper::VM_ENV);
    if args.detach && vm_child.is_none() {
        return match keeper::from_env(keeper::KEEPER_ENV) {
            Some(vm) => keep(&args, vm),
            None => detach(&args, detached::Then::Start),
        };
    }
    // husk's own steps before the VM exists, for --timings.
    let mut marks = Vec::new();
    let mut mark = |name: &'static str| marks.push((name, started.elapsed()));
    let mut plan = plan(&args)?;
    mark("image ready");
    if let Some(vm) = &vm_child {
        plan.vsock = Some(detached_vsock(&plan, vm));
        detached::keep_root(&mut plan, vm, named.is_some())?;
    }
    // passt (if any) lives until this function returns, in the process
    // that started it (the jail's supervisor).
    let member = net::Member::of(&args, vm_child.as_ref());
    let net::Attached {
        configs: net,
        passt: _passt,
        setup: net_setup,
        mut memberships,
    } = attach_net(&plan.net, &args.names, &member)?;
    if !plan.net.is_empty() {
        mark("network ready");
    }
    let seccomp = match args.seccomp {
        Seccomp::Kill => vmm::SeccompMode::Kill,
        Seccomp::Log => vmm::SeccompMode::Log,
        Seccomp::Off => vmm::SeccompMode::Off,
    };
    if plan.husk_init && !net_setup.is_empty() {
        plan.params.push(net_setup.to_param());
    }
    // One virtiofsd per shared folder, likewise.
    let (shares, _virtiofsd, mut fs_setup) = shares::attach(&plan.shares)?;
    fs_setup.tmpfs.clone_from(&args.tmpfs);
    if !plan.shares.is_empty() {
        mark("shared folders ready");
    }
    if !fs_setup.is_empty() {
        plan.params.push(fs_setup.to_param());
    }
    // husk's own kernel needs no PIT; any other kernel gets one.
    let (kernel, legacy_pit) = match &plan.config_kernel {
        Some(k) => (k.clone(), true),
        None => {
            let cache = builder::cache::root().context("cannot find husk's cache folder")?;
            (kernel::find(&cache)?.vmlinux(), false)
        }
    };
    let restore_named = match (&named, &plan.image) {
        (Some(n), Some(image)) => Some(n.open(&kernel, &image.path, plan.cpus, plan.memory_mib)?),
        (Some(n), None) => anyhow::bail!("{} holds no appliance image", n.dir.display()),
        (None, _) => None,
    };
    let vsock_cid = plan.vsock.as_ref().map_or(DEFAULT_CID, |v| v.0);
    let backends: Vec<&'static str> = plan
        .net
        .iter()
        .map(|n| match (&n.tap, &n.network) {
            (Some(_), _) => "tap",
            (None, Some(_)) => "network",
            (None, None) => "user",
        })
        .collect();
    let tags: Vec<&str> = shares.iter().map(|s| s.tag.as_str()).collect();
    // A detached VM has empty slots that `husk network connect` puts
    // interfaces into while it runs; one restored from a named snapshot
    // has the slots the snapshot's VM had.
    let net_slots = match (&restore_named, &vm_child) {
        (Some(r), _) => r
            .snapshot
            .header
            .devices
            .iter()
            .filter(|d| d.as_str() == vmm::snapshot::device_name(0))
            .count() as u8,
        (None, Some(_)) => args.net_slots.unwrap_or(NET_SLOTS),
        (None, None) => args.net_slots.unwrap_or(0),
    };
    let warm = match &plan.image {
        Some(image) if !args.cold && warm::restorable(plan.husk_init, &plan.disks) => {
            warm::Warm::prepare(&warm::Shape {
                target: args.target.as_deref().unwrap_or_default(),
                kernel: &kernel,
                image: &image.path,
                cmdline: &plan.cmdline,
                cpus: plan.cpus,
                memory_mib: plan.memory_mib,
                disks: &plan.disks,
                nets: &backends,
                shares: &tags,
                vsock_cid,
                legacy_pit,
                net_slots,
            })
        }
        _ => None,
    };
    match &warm {
        Some(warm::Warm::Restore { .. }) => mark("snapshot opened"),
        Some(warm::Warm::Take { .. }) => mark("no snapshot yet: this run takes one"),
        None => {}
    }
    // A detached VM child: what a snapshot of it on request would be.
    let snapshot_requests = match &vm_child {
        Some(vm) => named::serve_requests(vm, named::offer(&args, &plan, &named, &kernel, vm))?,
        None => None,
    };
    let params = plan.params.join(" ");
    // A named snapshot's restore reads its new seed through vsock, from
    // a connection to the VM's socket (below): it gets a device on a
    // socket of this run's (which its broker removes when the VMM ends)
    // where it has none.
    if named.is_some() && plan.vsock.is_none() {
        plan.vsock = Some((vsock_cid, own_vsock_path()));
    }
    // The vsock socket and its broker. A warm VM reads its parameters
    // through vsock where they are too large for init's resume area: one
    // with no device of its own gets one that only husk speaks to (its
    // presets, below), with no socket and no broker, which nothing on the
    // host could know of.
    let (_vsock, mut vsock) = match &plan.vsock {
        Some((cid, uds)) => {
            let (host, config) = HostVsock::start(uds, *cid, seccomp)?;
            (Some(host), Some(config))
        }
        None if warm.is_some() => (None, Some(VsockConfig::without_socket(vsock_cid))),
        None => (None, None),
    };
    if vsock.is_some() {
        mark("vsock ready");
    }
    // Held until the VM ends: the restored guest's agent reads its new
    // seed from it.
    let _reseed = match (&restore_named, &plan.vsock) {
        (Some(_), Some((_, uds))) => Some(named::reseed_connection(uds)?),
        _ => None,
    };
    let (snapshot, restore, warm_dir, resume_frame) = match warm {
        Some(w) => {
            plan.cmdline.push(' ');
            plan.cmdline.push_str(husk_init::config::SNAPSHOT_ARG);
            // Written into init's resume area; served on vsock too, for a
            // frame too large for it.
            let frame = warm::resume_frame(params)?;
            let socket = warm::resume_socket(&frame)?;
            if let Some(v) = &mut vsock {
                v.presets.push((agent::RESUME_PORT, socket));
            }
            match w {
                warm::Warm::Take { dir, target } => (Some(target), None, Some(dir), Some(frame)),
                warm::Warm::Restore { dir, restore } => {
                    (None, Some(*restore), Some(dir), Some(frame))
                }
            }
        }
        None => {
            if !params.is_empty() {
                plan.cmdline.push(' ');
                plan.cmdline.push_str(&params);
            }
            (None, restore_named, None, None)
        }
    };
    let stdin = std::io::stdin();
    let input = stdin
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)
        .context("cannot duplicate stdin")?;
    // A terminal goes raw, so keys reach the guest as typed; restored on
    // every way out of this function.
    let _raw = RawTerminal::enter();
    let mut config = VmConfig {
        cpus: plan.cpus,
        memory_mib: plan.memory_mib,
        kernel,
        initrd: plan.initrd.clone(),
        cmdline: plan.cmdline.clone(),
        disks: plan.disks.clone(),
        net,
        net_slots,
        vsock,
        shares,
        console_output: Box::new(std::io::stdout()),
        console_input: Some(input),
        timeout: args.timeout,
        legacy_pit,
        report_memory: args.timings,
        seccomp,
        started,
        snapshot,
        restore,
        snapshot_requests,
        resume_frame,
    };
    let jail = if args.jail || (!args.no_jail && is_root()) {
        let (uid, gid) = args
            .jail_user
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
            .context("--jail-user: write UID:GID with numbers")?;
        Some(vmm::jail::JailConfig {
            uid,
            gid,
            // Guest RAM plus room for the VMM and the disks' page cache.
            memory_limit: (plan.memory_mib << 20) + vmm::jail::MEMORY_ROOM,
            cpus: u32::from(plan.cpus),
            // Room for every vsock stream the device allows.
            max_files: 256
                + if config.vsock.is_some() {
                    MAX_CONNECTIONS as u64
                } else {
                    0
                },
            // Landlock stands in for a network namespace only where the
            // filters refuse sockets.
            network: match seccomp {
                vmm::SeccompMode::Kill => vmm::jail::NetworkFence::Landlock,
                _ => vmm::jail::NetworkFence::Namespace,
            },
            own_cgroup: !args.keep_cgroup,
        })
    } else {
        None
    };
    let mut files = vmm::open_host_files(&config)?;
    mark("host files opened");
    let mut left = Vec::new();
    if let Some(jail) = &jail {
        let forked = vmm::jail::enter(jail, |side| match side {
            vmm::jail::Forked::Child => {
                files.reopen_own();
                // The jailed VMM holds its own end of each socket pair,
                // not the connections to the hubs.
                memberships.clear();
            }
            vmm::jail::Forked::Supervisor => {
                left = keep_memberships(&mut memberships);
                // The jailed VMM's ends of the interfaces' sockets are
                // then the only ones: one it lets go of while the VM
                // runs (`husk network disconnect`) ends that membership.
                files.close_interfaces(&mut config);
            }
        })?;
        match forked {
            vmm::jail::Side::Supervisor(status) => {
                drop(_raw);
                // A warm start's snapshot the VM ended before taking (its
                // boot failed, or was stopped) leaves no folder behind.
                if let Some(target) = config.snapshot.take() {
                    if let Err(e) = target.discard_untaken() {
                        eprintln!("husk: {e}");
                    }
                }
                // The supervisor's copies of the VM's other host files.
                drop(config);
                leave_networks(left);
                return Ok(ExitCode::from(status));
            }
            vmm::jail::Side::Jailed => mark("jail entered"),
        }
    }
    left.extend(keep_memberships(&mut memberships));
    let outcome = vmm::run_with(config, files);
    // The VMM and its sockets are gone. (This thread may be under the
    // VMM's filter; the memberships' threads, older, are not.)
    leave_networks(left);
    let outcome = outcome?;
    drop(_raw);
    drop(plan);
    // This thread is under the VMM's seccomp filter now: nothing below
    // may touch a path. A snapshot that failed left a state file that
    // does not parse, refused (and taken again) by the next run.
    if let (Some(Err(e)), Some(dir)) = (&outcome.snapshot, &warm_dir) {
        eprintln!(
            "husk: no snapshot was taken for warm starts in {} ({e}); the next run boots cold again",
            dir.display()
        );
    }
    if args.timings {
        for (name, at) in &marks {
            eprintln!("husk: {:>9.3} ms  {name}", at.as_secs_f64() * 1e3);
        }
        for (phase, at) in &outcome.timings {
            eprintln!("husk: {:>9.3} ms  {}", at.as_secs_f64() * 1e3, phase.name());
        }
        eprintln!(
            "husk: {:>9.3} ms  exit",
            started.elapsed().as_secs_f64() * 1e3
        );
        if let Some(m) = outcome.memory {
            let mib = |b: u64| b as f64 / f64::from(1 << 20);
            eprintln!(
                "husk: memory: peak RSS {:.1} MiB, RSS {:.1} MiB, guest RAM touched {:.1} MiB, VMM overhead {:.1} MiB",
                mib(m.peak),
                mib(m.resident),
                mib(m.guest),
                mib(m.overhead())
            );
        }
    }
    Ok(match outcome.exit {
        VmExit::Shutdown { status: Some(s) } => ExitCode::from(s),
        VmExit::Shutdown { status: None } => {
            eprintln!("husk: the guest stopped without reporting an exit status");
            ExitCode::from(EXIT_NO_STATUS)
        }
        VmExit::Timeout => {
            // How far it got tells a kernel that never reached init from a
            // command that never ended.
            let reached = match outcome.timings.last() {
                Some((phase, at)) => {
                    format!("{} at {:.3} s", phase.name(), at.as_secs_f64())
                }
                None => "nothing".into(),
            };
            // And where it was, for the guest kernel's symbols.
            let at: String = outcome
                .stuck_at
                .iter()
                .map(|(id, rip)| format!("; vCPU {id} at {rip:#x}"))
                .collect();
            eprintln!(
                "husk: the guest was still running after --timeout (the last it reached: \
                 {reached}{at}); stopped it"
            );
            ExitCode::from(EXIT_TIMEOUT)
        }
    })
}

/// Keeps the run on its husk networks while its VM runs, should a hub go
/// away: from threads of this process, which stays (outside the jail, or
/// with the VMM in it).
fn keep_memberships(
    memberships: &mut Vec<crate::networks::Membership>,
) -> Vec<crate::networks::Left> {
    memberships.drain(..).map(|m| m.keep()).collect()
}

/// Waits (briefly) for the memberships of a VM that ended to give up
/// their addresses.
fn leave_networks(left: Vec<crate::networks::Left>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    for l in left {
        l.wait(deadline);
    }
}

/// The vsock socket of a foreground run that needs one only for itself.
fn own_vsock_path() -> PathBuf {
    std::env::temp_dir().join(format!("husk-{}.vsock", std::process::id()))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Raw mode on a terminal stdin for as long as it lives.
struct RawTerminal(bool);

impl RawTerminal {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        let tty = stdin.is_terminal() && stdin.lock().set_raw_mode().is_ok();
        RawTerminal(tty)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.0 {
            let _ = std::io::stdin().lock().set_canon_mode();
        }
    }
}
