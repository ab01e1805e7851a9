//! What `husk build`, `run` and `inspect` accept: an appliance file (or a
//! folder holding `appliance.toml`), or an image reference; a word that
//! is neither a file nor a folder here and reads as a registry reference
//! (`nginx`, `alpine:3.19`, `quay.io/org/app`) is one, as docker and
//! podman take it.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use appliance_spec::{Appliance, SpecError};
use builder::{Built, Input};

pub enum Target {
    Appliance(Box<Appliance>, PathBuf),
    /// The source, the reference as given (`docker://` and in full for a
    /// bare registry reference), and that bare word.
    Image(appliance_spec::Source, String, Option<String>),
}

/// When a registry image is pulled, as docker's and podman's `--pull`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Pull {
    /// When it has not been pulled yet; then it is used as it is
    #[default]
    Missing,
    /// Again, for the image its tag names now (blobs already here are
    /// not fetched)
    Always,
    /// Never: one not pulled yet is an error
    Never,
}

impl Target {
    /// Pulls the registry image this target is or starts from (an
    /// appliance file's `rootfs.from`) as `policy` says, for the build
    /// that follows; nothing for any other.
    pub fn pull(&self, policy: Pull) -> anyhow::Result<()> {
        let appliance_spec::Source::Registry(reference) = self.source() else {
            return Ok(());
        };
        let cache = builder::cache::root().context("cannot find husk's cache folder")?;
        match policy {
            Pull::Missing => Ok(()),
            Pull::Always => builder::oci::run_pull(reference, &cache)
                .with_context(|| format!("cannot pull {reference}")),
            Pull::Never if builder::oci::is_pulled(reference, &cache) => Ok(()),
            Pull::Never => anyhow::bail!("{reference} has not been pulled, and --pull never"),
        }
    }

    pub fn parse(arg: &str) -> anyhow::Result<Self> {
        let looks_like_ref = [
            "oci:",
            "oci-archive:",
            "docker-archive:",
            "docker://",
            "dir:",
        ]
        .iter()
        .any(|p| arg.starts_with(p));
        if looks_like_ref {
            let source = arg.parse().map_err(|e: String| anyhow::anyhow!("{e}"))?;
            return Ok(Target::Image(source, arg.to_string(), None));
        }
        if !std::path::Path::new(arg).exists() && !arg.ends_with(".toml") {
            if let Some(full) = appliance_spec::registry_reference(arg) {
                return Ok(Target::Image(
                    appliance_spec::Source::Registry(full.clone()),
                    format!("docker://{full}"),
                    Some(arg.to_string()),
                ));
            }
        }
        let mut file = PathBuf::from(arg);
        if file.is_dir() {
            file.push("appliance.toml");
        }
        match Appliance::load(&file) {
            Ok(a) => Ok(Target::Appliance(Box::new(a), file)),
            Err(SpecError::Invalid(diags)) => Err(anyhow::anyhow!("{diags}")),
            Err(e) => Err(anyhow::Error::from(e).context(format!(
                "{arg} is neither an appliance file nor an image reference \
                 (oci:DIR[:TAG], oci-archive:PATH, docker-archive:PATH, dir:PATH, \
                 docker://REF or REF, such as alpine:3.19)"
            ))),
        }
    }

    /// The word a bare registry reference was given as (`alpine:3.19`).
    pub fn bare_word(&self) -> Option<&str> {
        match self {
            Target::Image(_, _, word) => word.as_deref(),
            Target::Appliance(..) => None,
        }
    }

    /// Where the root filesystem comes from.
    pub fn source(&self) -> &appliance_spec::Source {
        match self {
            Target::Appliance(a, _) => &a.rootfs.from,
            Target::Image(s, ..) => s,
        }
    }

    pub fn appliance(&self) -> Option<&Appliance> {
        match self {
            Target::Appliance(a, _) => Some(a),
            Target::Image(..) => None,
        }
    }

    /// Builds the image (or finds it in the cache), with progress on a
    /// terminal.
    pub fn build(&self) -> anyhow::Result<Built> {
        let cache = builder::cache::root().context("cannot find husk's cache folder")?;
        let exe = std::env::current_exe().context("cannot locate the husk binary")?;
        let init = builder::find_init(&exe)?;
        let tty = std::io::stderr().is_terminal();
        let mut progress = |step: &str| {
            if tty {
                eprintln!("husk: {step}");
            }
        };
        let input = match self {
            Target::Appliance(a, _) => Input::Appliance(a),
            Target::Image(s, ..) => Input::Image(s),
        };
        let what = match self {
            Target::Appliance(_, file) => file.display().to_string(),
            Target::Image(_, arg, None) => arg.clone(),
            Target::Image(_, arg, Some(word)) => format!(
                "{word} (no appliance file or folder here, so the registry image {})",
                arg.trim_start_matches("docker://")
            ),
        };
        let built = builder::build(input, &init, &cache, &mut progress)
            .with_context(|| format!("cannot build {what}"))?;
        // For husk image ls and prune; a read-only cache keeps no record.
        if let Err(e) = builder::images::record_use(&built.path, &self.identity()) {
            tracing::debug!("cannot record the use of {}: {e}", built.path.display());
        }
        Ok(built)
    }

    /// What this target is wherever husk runs: the appliance file's
    /// canonical path, or the reference with its path made absolute.
    fn identity(&self) -> String {
        let absolute = |p: &str| match std::env::current_dir() {
            Ok(cwd) if !p.starts_with('/') => cwd.join(p).display().to_string(),
            _ => p.to_string(),
        };
        match self {
            Target::Appliance(_, file) => std::fs::canonicalize(file)
                .unwrap_or_else(|_| file.clone())
                .display()
                .to_string(),
            Target::Image(_, arg, _) => {
                let prefix = ["oci:", "oci-archive:", "docker-archive:", "dir:"]
                    .into_iter()
                    .find(|p| arg.starts_with(p));
                match prefix {
                    Some(p) => format!("{p}{}", absolute(&arg[p.len()..])),
                    None => arg.clone(),
                }
            }
        }
    }
}

/// The kernel command line that boots a built image with husk's init.
pub fn boot_cmdline(format: appliance_spec::ImageFormat, readonly: bool) -> String {
    use appliance_spec::ImageFormat;
    use husk_init::config::INIT_PATH;
    match format {
        ImageFormat::Ext4 => format!(
            "root=/dev/vda rootfstype=ext4 {} init={INIT_PATH}",
            if readonly { "ro" } else { "rw" }
        ),
        ImageFormat::Initramfs => format!("rdinit={INIT_PATH}"),
    }
}
