//! The husk appliance format: an appliance described in TOML.
//!
//! [`Appliance::load`] reads a file, checks it, and returns the appliance
//! with every host path resolved against the file's folder. Every problem is
//! reported with the file, line, column and dotted field path it is about;
//! `README.md` in this crate is the reference for the format.

#![forbid(unsafe_code)]

mod diag;
mod model;
mod validate;
mod values;

use std::path::{Path, PathBuf};

/// Whether `text` is a volume's name as docker takes one: a letter or
/// digit, then at least one more of letters, digits and `_.-`; at most
/// 128 bytes.
pub fn is_volume_name(text: &str) -> bool {
    text.len() >= 2
        && text.len() <= 128
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Whether `text` can name a husk network (`husk network create`): as a
/// container's name, 1 to 64 letters, digits, `_.-`, starting with a
/// letter or digit, and none of the words `--net` gives another meaning
/// (`none`, `user`) or docker's own networks have.
pub fn is_network_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && !["none", "user", "host", "bridge", "default"].contains(&text)
}

pub use diag::{Diagnostic, Diagnostics, FieldPath};
pub use model::{
    Appliance, DirEntry, Disk, FileEntry, Health, ImageFormat, KernelRef, Metadata, NetInterface,
    OnExit, Ready, Rootfs, Run, Share, SymlinkEntry, Vm, Vsock,
};
pub use values::{
    registry_reference, ByteSize, Cidr, ExposedPort, GuestPath, IdOrName, ImageSize, MacAddr, Mode,
    PortSpec, Signal, Source, UserSpec, MAX_PORT_RANGE,
};

use diag::Locator;
use serde::Deserialize;
use toml::de::DeTable;

/// Why an appliance file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl Appliance {
    /// Reads, parses and validates an appliance file.
    pub fn load(file: &Path) -> Result<Appliance, SpecError> {
        let text = std::fs::read_to_string(file).map_err(|source| SpecError::Read {
            path: file.to_path_buf(),
            source,
        })?;
        Appliance::parse(&text, file)
    }

    /// Parses and validates appliance text that came from `file`; relative
    /// host paths are resolved against `file`'s folder, which must exist for
    /// the host-path checks to pass.
    pub fn parse(text: &str, file: &Path) -> Result<Appliance, SpecError> {
        let invalid = |d: Diagnostic| SpecError::Invalid(Diagnostics(vec![d]));
        let tree = match DeTable::parse(text) {
            Ok(tree) => tree,
            Err(e) => {
                let empty = toml::Spanned::new(0..0, DeTable::default());
                let loc = Locator::new(file, text, &empty);
                return Err(invalid(loc.at_span(e.span(), e.message())));
            }
        };
        let loc = Locator::new(file, text, &tree);
        let de = toml::de::Deserializer::from(tree.clone());
        let mut appliance =
            Appliance::deserialize(de).map_err(|e| invalid(loc.at_span(e.span(), e.message())))?;

        let base = file.parent().unwrap_or(Path::new("."));
        appliance.resolve_host_paths(base);

        let mut problems = validate::check(&appliance);
        problems.extend(validate::check_host_paths(&appliance));
        if problems.is_empty() {
            return Ok(appliance);
        }
        let mut diags: Vec<Diagnostic> = problems
            .into_iter()
            .map(|(field, message)| loc.at_field(&field, message))
            .collect();
        diags.sort_by_key(|d| (d.line, d.column));
        Err(SpecError::Invalid(Diagnostics(diags)))
    }

    /// Makes every relative host path absolute against `base`.
    fn resolve_host_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = self.rootfs.from.host_path_mut() {
            fix(p);
        }
        for f in &mut self.rootfs.files {
            if let Some(src) = &mut f.src {
                fix(src);
            }
        }
        if let KernelRef::Path(p) = &mut self.vm.kernel {
            fix(p);
        }
        if let Some(p) = &mut self.vm.initrd {
            fix(p);
        }
        for d in &mut self.vm.disks {
            fix(&mut d.path);
        }
        if let Some(v) = &mut self.vm.vsock {
            fix(&mut v.uds);
        }
        for s in self.vm.shares.iter_mut().filter_map(|s| s.host.as_mut()) {
            fix(s);
        }
    }
}
