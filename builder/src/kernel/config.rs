//! The kernel configuration fragment husk owns, and the check that a
//! finished `.config` really holds every option the fragment asks for.

use std::collections::BTreeMap;

/// husk's x86_64 guest kernel fragment, applied over `allnoconfig`.
pub const X86_64: &str = include_str!("../../kernel/x86_64.config");

/// What the portable flavour adds to (or changes in) [`X86_64`].
pub const X86_64_PORTABLE: &str = include_str!("../../kernel/x86_64-portable.config");

/// Options named by a fragment or a `.config`: name -> value, where an
/// option that is off reads as `n`.
pub type Options = BTreeMap<String, String>;

/// Parses `CONFIG_X=v` lines and `# CONFIG_X is not set` comments.
pub fn parse(text: &str) -> Options {
    let mut out = Options::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            out.insert(name.to_string(), "n".to_string());
        } else if let Some((name, value)) = line.split_once('=') {
            if name.starts_with("CONFIG_") {
                out.insert(name.to_string(), value.to_string());
            }
        }
    }
    out
}

/// The options `wanted` asks for that `have` does not hold, as
/// `(name, wanted, found)`.
pub fn missing(wanted: &Options, have: &Options) -> Vec<(String, String, String)> {
    wanted
        .iter()
        .filter_map(|(name, want)| {
            let found = have.get(name).map_or("n", String::as_str);
            (found != want).then(|| (name.clone(), want.clone(), found.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_set_and_unset() {
        let o = parse("# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n");
        assert_eq!(o["CONFIG_A"], "y");
        assert_eq!(o["CONFIG_B"], "n");
        assert_eq!(o["CONFIG_C"], "\"x\"");
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn reports_dropped_options() {
        let want = parse("CONFIG_A=y\nCONFIG_B=n\nCONFIG_C=32\n");
        let have = parse("CONFIG_A=y\nCONFIG_C=64\n");
        assert_eq!(
            missing(&want, &have),
            vec![("CONFIG_C".into(), "32".into(), "64".into())]
        );
        let have = parse("CONFIG_B=y\nCONFIG_C=32\n");
        let names: Vec<_> = missing(&want, &have).into_iter().map(|m| m.0).collect();
        assert_eq!(names, ["CONFIG_A", "CONFIG_B"]);
    }

    #[test]
    fn portable_fragment_adds_what_standard_hardware_needs() {
        let micro = parse(X86_64);
        let both = parse(&format!("{X86_64}{X86_64_PORTABLE}"));
        for must in [
            "CONFIG_ACPI",
            "CONFIG_PCI",
            "CONFIG_EFI_STUB",
            "CONFIG_VIRTIO_PCI",
            "CONFIG_SATA_AHCI",
            "CONFIG_BLK_DEV_NVME",
            "CONFIG_HYPERV_STORAGE",
            "CONFIG_VMXNET3",
            "CONFIG_SERIAL_8250_CONSOLE",
        ] {
            assert_eq!(both[must], "y", "{must}");
            assert_ne!(micro.get(must).map(String::as_str), Some("y"), "{must}");
        }
        // Still one file, no modules; the micro-VM's options stay.
        assert_eq!(both["CONFIG_MODULES"], "n");
        assert_eq!(both["CONFIG_VIRTIO_MMIO"], "y");
    }

    #[test]
    fn own_fragment_is_well_formed() {
        let o = parse(X86_64);
        assert!(o.len() > 50);
        for must in [
            "CONFIG_PVH",
            "CONFIG_VIRTIO_MMIO",
            "CONFIG_EXT4_FS",
            "CONFIG_KVM_GUEST",
        ] {
            assert_eq!(o[must], "y", "{must}");
        }
        assert_eq!(o["CONFIG_MODULES"], "n");
        // Every non-comment line is an option assignment.
        for line in X86_64.lines().map(str::trim) {
            assert!(
                line.is_empty() || line.starts_with('#') || line.starts_with("CONFIG_"),
                "stray line {line:?}"
            );
        }
    }
}
