//! `husk export`: an appliance or image reference to a disk that other
//! hypervisors and the clouds boot (UEFI, husk's portable kernel).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use appliance_spec::{Appliance, KernelRef, Vm};
use builder::export::{self, Format, Machine, Request};
use builder::kernel::{self, Flavor};

use super::target::Target;

#[derive(clap::Args)]
pub struct Args {
    /// An appliance file (or a folder with appliance.toml), or an image
    /// reference: oci:DIR[:TAG], oci-archive:PATH, docker-archive:PATH,
    /// docker://REF
    target: String,
    /// ova (VMware, VirtualBox), vmdk, vhd (Hyper-V, Azure), vhdx
    /// (Hyper-V), qcow2 (QEMU/KVM), raw, gce (Compute Engine's disk.raw
    /// tarball)
    #[arg(long, value_enum)]
    format: FormatArg,
    /// Where to write it (default: NAME.EXT in the current folder);
    /// written under a temporary name and renamed when complete
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Ova,
    Vmdk,
    Vhd,
    Vhdx,
    Qcow2,
    Raw,
    Gce,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Ova => Format::Ova,
            FormatArg::Vmdk => Format::Vmdk,
            FormatArg::Vhd => Format::Vhd,
            FormatArg::Vhdx => Format::Vhdx,
            FormatArg::Qcow2 => Format::Qcow2,
            FormatArg::Raw => Format::Raw,
            FormatArg::Gce => Format::Gce,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let format = Format::from(args.format);
    let target = Target::parse(&args.target)?;
    if let Some(folder) = target.source().folder() {
        bail!(
            "{} is a root from a host folder ({}), which a portable VM cannot reach; \
             export an image built from it (rootfs.from = an image, or \
             `husk build` of an appliance that copies the folder in)",
            args.target,
            folder.display()
        );
    }
    if let Some(a) = target.appliance() {
        portable(a)?;
    }
    // What can be refused without building is refused first.
    export::check_tools(format)?;
    let cache = builder::cache::root().context("cannot find husk's cache folder")?;
    let kernel = kernel::find_flavor(&cache, Flavor::Portable)?;
    let built = target.build()?;
    let vm = target
        .appliance()
        .map_or_else(Vm::default, |a| a.vm.clone());
    let machine = Machine {
        name: target.appliance().map_or_else(
            || name_of_reference(&args.target),
            |a| a.appliance.name.clone(),
        ),
        version: target.appliance().and_then(|a| a.appliance.version.clone()),
        description: target
            .appliance()
            .and_then(|a| a.appliance.description.clone()),
        cpus: vm.cpus,
        memory_mib: vm.memory.0 >> 20,
    };
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| export::default_output(&machine.name, format));
    let tty = std::io::stderr().is_terminal();
    let bz_image = kernel.bz_image();
    let req = Request {
        image: &built.path,
        image_format: built.format,
        image_digest: &built.digest,
        readonly: target.appliance().is_some_and(|a| a.rootfs.readonly),
        extra_cmdline: vm.cmdline.as_deref(),
        kernel: &bz_image,
        machine,
        format,
        output: &output,
        progress_bar: tty,
    };
    let mut progress = |step: &str| eprintln!("husk: {step}");
    let done = export::export(&req, &mut progress)
        .with_context(|| format!("cannot export {} as {}", args.target, format.name()))?;
    println!("{}", done.path.display());
    eprintln!(
        "husk: {}, {:.1} MiB ({} MiB disk) in {:.1} s",
        format.name(),
        done.size as f64 / f64::from(1 << 20),
        done.disk_size >> 20,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Refuses what only husk can give a VM: host folders, host disk files,
/// husk's vsock, a kernel or initramfs of the appliance's own.
fn portable(a: &Appliance) -> anyhow::Result<()> {
    let vm = &a.vm;
    let mut why = Vec::new();
    if !vm.shares.is_empty() {
        why.push("vm.shares: a host folder (another hypervisor has no virtiofsd to serve it)");
    }
    if !vm.disks.is_empty() {
        why.push("vm.disks: a host disk file (attach it in the other hypervisor instead)");
    }
    if vm.vsock.is_some() {
        why.push("vm.vsock: husk's vsock to a host Unix socket");
    }
    if vm.kernel != KernelRef::Default {
        why.push("vm.kernel: a kernel of its own (exports boot husk's portable kernel)");
    }
    if vm.initrd.is_some() {
        why.push("vm.initrd: an initramfs of its own");
    }
    if !why.is_empty() {
        bail!(
            "{} asks for what a portable VM cannot give:\n  {}",
            a.appliance.name,
            why.join("\n  ")
        );
    }
    if !vm.net.is_empty() {
        eprintln!(
            "husk: note: vm.net is husk's network (passt or a tap, published ports); \
             the exported machine's network card is the hypervisor's and init does not \
             configure it"
        );
    }
    Ok(())
}

/// A name for an image reference: its last path part, without tag or
/// digest (`docker://library/nginx:1.25` gives `nginx`).
fn name_of_reference(reference: &str) -> String {
    let rest = reference.split_once(':').map_or(reference, |(_, r)| r);
    let rest = rest.trim_start_matches('/').trim_end_matches('/');
    let last = rest.rsplit('/').next().unwrap_or(rest);
    let last = last.split(['@', ':']).next().unwrap_or(last);
    let last = last
        .strip_suffix(".tar")
        .or_else(|| last.strip_suffix(".tar.gz"))
        .unwrap_or(last);
    if last.is_empty() {
        "appliance".into()
    } else {
        last.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_names() {
        for (reference, name) in [
            ("docker://library/nginx:1.25", "nginx"),
            ("docker://busybox", "busybox"),
            ("oci:/srv/images/web:latest", "web"),
            ("oci-archive:/tmp/app.tar", "app"),
            ("docker-archive:./x/y.tar", "y"),
            ("docker://ghcr.io/o/r@sha256:abc", "r"),
        ] {
            assert_eq!(name_of_reference(reference), name, "{reference}");
        }
    }

    #[test]
    fn what_only_husk_gives_is_refused_by_name() {
        let file = std::path::Path::new("/tmp/appliance.toml");
        let a = Appliance::parse(
            "[appliance]\nname = \"x\"\n[run]\ncommand = [\"/bin/true\"]\n\
             [[vm.shares]]\nhost = \"/tmp\"\nguest = \"/srv\"\n\
             [vm.vsock]\ncid = 3\nuds = \"/tmp/v.sock\"\n",
            file,
        )
        .unwrap();
        let err = portable(&a).unwrap_err().to_string();
        assert!(
            err.contains("vm.shares") && err.contains("vm.vsock"),
            "{err}"
        );
        let ok = Appliance::parse(
            "[appliance]\nname = \"x\"\n[run]\ncommand = [\"/bin/true\"]\n",
            file,
        )
        .unwrap();
        portable(&ok).unwrap();
    }
}
