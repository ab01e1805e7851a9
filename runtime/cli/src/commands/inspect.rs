//! `husk inspect`: what a built image runs, and what it holds.

use std::path::Path;
use std::process::ExitCode;

use super::target::{boot_cmdline, Pull, Target};

#[derive(clap::Args)]
pub struct Args {
    /// A built image (ext4 or initramfs), an appliance file, an image
    /// reference (built first, from the cache when it can be), or the
    /// name of a detached appliance
    image: String,
    /// List every file with its mode, owner and size
    #[arg(long)]
    files: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // A detached appliance's name, as docker inspect takes a container's.
    if !Path::new(&args.image).exists() && crate::vms::check_name(&args.image).is_ok() {
        if let Ok(vm) = crate::vms::VmDir::find(&args.image) {
            return inspect_vm(&vm);
        }
    }
    let path = if Path::new(&args.image).is_file()
        && builder::inspect::format_of(Path::new(&args.image)).is_ok()
    {
        Path::new(&args.image).to_path_buf()
    } else {
        let target = Target::parse(&args.image)?;
        // As docker inspect, which never pulls: a bare word is a
        // detached appliance's name or an image pulled already.
        if target.bare_word().is_some() && target.pull(Pull::Never).is_err() {
            anyhow::bail!(
                "no appliance named {0:?}, no file {0}, and no pulled image {0} \
                 (husk pull {0} pulls it)",
                args.image
            );
        }
        target.build()?.path
    };
    let format = builder::inspect::format_of(&path)?;
    let run = builder::inspect::run_config(&path)?;
    let fmt_name = match format {
        appliance_spec::ImageFormat::Ext4 => "ext4",
        appliance_spec::ImageFormat::Initramfs => "initramfs",
    };
    println!("image:    {} ({fmt_name})", path.display());
    println!("command:  {}", shell_words(&run.command));
    for e in &run.env {
        println!("env:      {e}");
    }
    println!("workdir:  {}", run.workdir.as_deref().unwrap_or("/"));
    println!("user:     {}", run.user.as_deref().unwrap_or("0:0 (root)"));
    if let Some(h) = &run.hostname {
        println!("hostname: {h}");
    }
    if !run.exposed_ports.is_empty() {
        println!("ports:    {}", run.exposed_ports.join(" "));
    }
    for (key, value) in &run.labels {
        println!("label:    {key}={value}");
    }
    if !run.volumes.is_empty() {
        println!(
            "volumes:  {} (each run gets anonymous volumes there)",
            run.volumes.join(" ")
        );
    }
    println!(
        "boot:     husk's kernel with \"{}\"{}",
        boot_cmdline(format, false),
        match format {
            appliance_spec::ImageFormat::Ext4 => " and the image as the first virtio disk",
            appliance_spec::ImageFormat::Initramfs => " and the image as its initrd",
        }
    );
    if args.files {
        println!();
        for f in builder::inspect::files(&path)? {
            println!(
                "{} {:>5} {:>5} {:>10} {}",
                f.mode_string(),
                f.uid,
                f.gid,
                f.size,
                f.path
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// argv as a shell would need it typed.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/-_.=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A detached appliance: its recorded state, its folder and, while it
/// runs, the guest's own view, as JSON.
fn inspect_vm(vm: &crate::vms::VmDir) -> anyhow::Result<ExitCode> {
    let state = vm.current_state()?;
    let running = state.status == crate::vms::Status::Running;
    let mut value = serde_json::to_value(&state)?;
    value["dir"] = vm.dir.display().to_string().into();
    value["log"] = vm.log().display().to_string().into();
    if running {
        if let Some(guest) = super::ps::guest_info(vm) {
            value["guest"] = serde_json::to_value(guest)?;
        }
    }
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(ExitCode::SUCCESS)
}
