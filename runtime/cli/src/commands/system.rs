//! `husk system df|prune`: what husk keeps on this machine, and removing
//! what nothing uses any more, as `docker system` does.

use std::process::ExitCode;

use anyhow::Context;

use super::{human_size, Doomed, Space};
use crate::vms::{Status, VmDir};

#[derive(clap::Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// How much space appliances, images, snapshots, volumes, kernels and
    /// pulled images take, and how much prune would free
    Df,
    /// Remove detached appliances that have exited, images no target
    /// builds to any more, snapshots no run can restore, networks no
    /// appliance is on or names, and what killed builds left; with --all,
    /// every image and snapshot too; with --volumes, every volume no
    /// appliance uses (and its data)
    Prune {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        volumes: bool,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let cache = builder::cache::root().context("cannot find husk's cache folder")?;
    let snapshots = super::run::warm::root()?;
    let images = || {
        builder::images::list(&cache)
            .with_context(|| format!("cannot read {}/images", cache.display()))
    };
    match cmd {
        Command::Df => {
            let kinds = [
                ("Appliances", appliances_space()?),
                ("Images", super::image::space(&images()?)),
                ("Snapshots", super::snapshot::space(&snapshots)?),
                ("Volumes", super::volume::space()?),
            ];
            let mut rows = vec![["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
                .map(String::from)
                .to_vec()];
            for (kind, space) in kinds {
                rows.push(vec![
                    kind.to_string(),
                    space.total.to_string(),
                    space.active.to_string(),
                    human_size(space.bytes),
                    human_size(space.reclaimable),
                ]);
            }
            // Kept by prune: a kernel takes minutes to build again, and a
            // pulled image is what a later build of its reference uses.
            // Each kernel and each pulled or imported image is a folder of
            // its own; the registries' blobs are the pulled images' too.
            for (kind, counted, also) in [
                ("Kernels", &["kernels"][..], &[][..]),
                ("Pulled images", &["pulls", "imports"][..], &["blobs"][..]),
            ] {
                let size: u64 = counted
                    .iter()
                    .chain(also)
                    .map(|d| builder::cache::disk_usage(&cache.join(d)))
                    .sum();
                let count = counted
                    .iter()
                    .filter_map(|d| std::fs::read_dir(cache.join(d)).ok())
                    .flat_map(|e| e.flatten())
                    // Not a temporary folder, nor the kernels' sources.
                    .filter(|e| {
                        let name = e.file_name();
                        let name = name.to_string_lossy();
                        !name.starts_with('.') && name != "build"
                    })
                    .count();
                rows.push(vec![
                    kind.to_string(),
                    count.to_string(),
                    "-".into(),
                    human_size(size),
                    human_size(0),
                ]);
            }
            super::print_columns(&rows);
            Ok(ExitCode::SUCCESS)
        }
        Command::Prune { all, volumes } => {
            let mut freed = 0;
            let mut failed = false;
            for (kind, doomed) in [
                ("appliances", exited_appliances()?),
                ("images", super::image::doomed(images()?, all)),
                ("snapshots", super::snapshot::doomed(&snapshots, all)?),
                (
                    "volumes",
                    if volumes {
                        super::volume::doomed()?
                    } else {
                        Vec::new()
                    },
                ),
            ] {
                if doomed.iter().any(|(key, ..)| key.is_some()) {
                    println!("Deleted {kind}:");
                }
                let (f, e) = super::remove_each(doomed);
                freed += f;
                failed |= e;
            }
            // Once the exited appliances are gone, the networks only they
            // named are unused too.
            let networks = super::network::doomed()?;
            if !networks.is_empty() {
                println!("Deleted networks:");
            }
            failed |= super::remove_each(networks).1;
            eprintln!("husk: freed {}", human_size(freed));
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// What the detached appliances' folders take; those that have exited
/// are what `prune` removes.
fn appliances_space() -> anyhow::Result<Space> {
    let mut space = Space::default();
    for vm in VmDir::all()? {
        let Ok(state) = vm.current_state() else {
            continue;
        };
        let bytes = builder::cache::disk_usage(&vm.dir);
        space.total += 1;
        space.bytes += bytes;
        if state.status == Status::Exited {
            space.reclaimable += bytes;
        } else {
            space.active += 1;
        }
    }
    Ok(space)
}

/// The detached appliances that have exited.
fn exited_appliances() -> anyhow::Result<Vec<Doomed<'static>>> {
    let mut out: Vec<Doomed> = Vec::new();
    for vm in VmDir::all()? {
        let Ok(state) = vm.current_state() else {
            continue;
        };
        if state.status != Status::Exited {
            continue;
        }
        let bytes = builder::cache::disk_usage(&vm.dir);
        let name = vm.name.clone();
        let remove = move || super::rm::remove(&vm.name, false).map(drop);
        out.push((Some(name), bytes, Box::new(remove)));
    }
    Ok(out)
}
