//! `husk pull`: registry images pulled again, for what their tags name
//! now, and built, as `docker pull` brings an image up to date (`husk
//! run` and `build` otherwise pull an image once and keep it).

use std::process::ExitCode;

use super::target::{Pull, Target};

#[derive(clap::Args)]
pub struct Args {
    /// Registry images: REF (alpine:3.19, quay.io/org/app:v2) or
    /// docker://REF
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::each_name(&args.images, |image| {
        let target = Target::parse(image)?;
        let reference = match (target.appliance(), target.source()) {
            (None, appliance_spec::Source::Registry(reference)) => reference.clone(),
            _ => anyhow::bail!("{image} is no registry image (husk build builds it)"),
        };
        target.pull(Pull::Always)?;
        let built = target.build()?;
        println!("{reference}");
        eprintln!(
            "husk: {reference}: image {}{}",
            built.digest,
            if built.cached { ", as before" } else { "" }
        );
        Ok(())
    })
}
