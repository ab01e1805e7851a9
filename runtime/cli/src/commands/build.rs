//! `husk build`: an appliance or image reference to a bootable image.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::target::{Pull, Target};

#[derive(clap::Args)]
pub struct Args {
    /// An appliance file (or a folder with appliance.toml), or an image
    /// reference: oci:DIR[:TAG], oci-archive:PATH, docker-archive:PATH
    target: String,
    /// Also write the image here (written whole, then renamed into place)
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Pull a registry image: missing, always (what its tag names now) or
    /// never
    #[arg(long, value_enum, default_value_t)]
    pull: Pull,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let target = Target::parse(&args.target)?;
    target.pull(args.pull)?;
    let built = target.build()?;
    let path = match &args.output {
        Some(out) => {
            builder::cache::copy_sparse(&built.path, out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            out.clone()
        }
        None => built.path.clone(),
    };
    println!("{}", path.display());
    eprintln!(
        "husk: {} image, {:.1} MiB, {}{}",
        match built.format {
            appliance_spec::ImageFormat::Ext4 => "ext4",
            appliance_spec::ImageFormat::Initramfs => "initramfs",
        },
        built.size as f64 / f64::from(1 << 20),
        built.digest,
        if built.cached { " (cached)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}
