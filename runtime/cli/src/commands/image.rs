//! `husk image ls|rm|prune`: the images `husk build` (and `run`, `export`,
//! `inspect`, the container runtimes) keep in the cache, as `docker image`
//! lists and removes its own. See `builder::images` for what is recorded.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use builder::images::{self, CachedImage, Unused};

use super::human_size;

#[derive(clap::Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// List the built images: format, size on disk, when built and last
    /// used, and the appliance file or image reference last built to it
    Ls {
        /// Each as TEMPLATE says, as docker's: {{.ID}} (12 digits) {{.Key}}
        /// {{.Format}} {{.Size}} {{.Built}} {{.Used}} {{.State}}
        /// {{.Target}}; "table TEMPLATE"; "json"
        #[arg(long, value_name = "TEMPLATE")]
        format: Option<String>,
    },
    /// Remove images by key (or a unique beginning of a key); a VM running
    /// one keeps it until it ends
    Rm {
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Remove the images no target builds to any more (superseded: their
    /// appliance or image changed; orphaned: it is gone) and what killed
    /// builds left; with --all, every image
    Prune {
        #[arg(long)]
        all: bool,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let cache = builder::cache::root().context("cannot find husk's cache folder")?;
    let listing =
        images::list(&cache).with_context(|| format!("cannot read {}/images", cache.display()))?;
    match cmd {
        Command::Ls { format } => {
            let format = format
                .as_deref()
                .map(super::listing::Format::parse)
                .transpose()?;
            ls(&listing.images, format)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rm { keys } => super::each_name(&keys, |key| {
            let image = find(&listing.images, key)?;
            remove(&image.dir)?;
            println!("{}", image.key);
            Ok(())
        }),
        Command::Prune { all } => Ok(super::prune(doomed(listing, all))),
    }
}

/// What the images take: those in use, and those `prune` removes (with
/// what killed builds left).
pub fn space(listing: &images::Listing) -> super::Space {
    let leftovers: u64 = listing
        .leftovers
        .iter()
        .map(|d| builder::cache::disk_usage(d))
        .sum();
    let mut space = super::Space {
        total: listing.images.len(),
        bytes: leftovers,
        reclaimable: leftovers,
        ..super::Space::default()
    };
    for (image, unused) in listing.images.iter().zip(images::unused(&listing.images)) {
        space.bytes += image.bytes;
        match unused {
            None => space.active += 1,
            Some(_) => space.reclaimable += image.bytes,
        }
    }
    space
}

/// What `prune` removes: the images no target builds to any more (with
/// `all`, every one), and what killed builds left.
pub fn doomed(listing: images::Listing, all: bool) -> Vec<super::Doomed<'static>> {
    let unused = images::unused(&listing.images);
    let doomed = listing
        .images
        .into_iter()
        .zip(unused)
        .filter(|(_, u)| all || u.is_some())
        .map(|(i, _)| (Some(i.key), i.bytes, i.dir));
    let leftovers = listing
        .leftovers
        .into_iter()
        .map(|d| (None, builder::cache::disk_usage(&d), d));
    doomed
        .chain(leftovers)
        .map(|(key, bytes, dir)| -> super::Doomed { (key, bytes, Box::new(move || remove(&dir))) })
        .collect()
}

/// The fields of `image ls`, and their titles.
const COLUMNS: [(&str, &str); 8] = [
    ("ID", "KEY"),
    ("Key", "KEY"),
    ("Format", "FORMAT"),
    ("Size", "SIZE"),
    ("Built", "BUILT"),
    ("Used", "USED"),
    ("State", "STATE"),
    ("Target", "TARGET"),
];

fn ls(all: &[CachedImage], format: Option<super::listing::Format>) -> anyhow::Result<()> {
    let now = crate::vms::now_ms();
    let ago = |ms: u64| format!("{} ago", crate::vms::human_duration(now.saturating_sub(ms)));
    let mut rows = Vec::new();
    for (image, unused) in all.iter().zip(images::unused(all)) {
        let built = image.built.map_or_else(
            || "?".into(),
            |t| {
                ago(t
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64))
            },
        );
        let (used, target) = match &image.used {
            Some(u) => (ago(u.at_ms), u.target.as_str()),
            None => ("?".into(), "?"),
        };
        let state = match unused {
            None => "",
            Some(Unused::Superseded) => "superseded",
            Some(Unused::Orphaned) => "orphaned",
        };
        rows.push(super::listing::row(&COLUMNS, |field| match field {
            "ID" => image.key[..image.key.len().min(12)].to_string(),
            "Key" => image.key.clone(),
            "Format" => image.format.to_string(),
            "Size" => human_size(image.bytes),
            "Built" => built.clone(),
            "Used" => used.clone(),
            "State" => state.into(),
            _ => target.into(),
        }));
    }
    if let Some(format) = format {
        return format.print(&COLUMNS, &rows);
    }
    let cell =
        |row: &serde_json::Value, field: &str| row[field].as_str().unwrap_or_default().to_string();
    println!(
        "{:<14} {:<9} {:>9}  {:<14}  {:<14}  {:<10}  TARGET",
        "KEY", "FORMAT", "SIZE", "BUILT", "USED", "STATE"
    );
    for r in &rows {
        println!(
            "{:<14} {:<9} {:>9}  {:<14}  {:<14}  {:<10}  {}",
            cell(r, "ID"),
            cell(r, "Format"),
            cell(r, "Size"),
            cell(r, "Built"),
            cell(r, "Used"),
            cell(r, "State"),
            cell(r, "Target"),
        );
    }
    let total: u64 = all.iter().map(|i| i.bytes).sum();
    eprintln!("husk: {} images, {}", all.len(), human_size(total));
    Ok(())
}

/// The image whose key is or begins with `key`.
fn find<'a>(all: &'a [CachedImage], key: &str) -> anyhow::Result<&'a CachedImage> {
    if key.is_empty() {
        anyhow::bail!("give an image's key (husk image ls lists them)");
    }
    let found: Vec<&CachedImage> = match all.iter().find(|i| i.key == key) {
        Some(whole) => vec![whole],
        None => all.iter().filter(|i| i.key.starts_with(key)).collect(),
    };
    match found[..] {
        [] => anyhow::bail!("{key}: no such image (husk image ls lists them)"),
        [one] => Ok(one),
        _ => anyhow::bail!(
            "{key}: {} images' keys begin so; give more of the key",
            found.len()
        ),
    }
}

fn remove(dir: &Path) -> anyhow::Result<()> {
    images::remove(dir).with_context(|| format!("cannot remove {}", dir.display()))
}
