//! The kernel configuration hashes (`kernel::config_hash`), computed here
//! once from the files the crate embeds: every `husk run` looks its
//! kernel up by the hash, and SHA-256 of the 5 KiB fragment in software
//! was 266,000 instructions of each run (callgrind).

use sha2::{Digest, Sha256};
use std::fmt::Write;

fn main() {
    let read = |name: &str| {
        println!("cargo:rerun-if-changed=kernel/{name}");
        std::fs::read_to_string(format!("kernel/{name}")).expect("the kernel's build inputs")
    };
    let recipe = read("recipe");
    let microvm = read("x86_64.config");
    let portable = format!("{microvm}{}", read("x86_64-portable.config"));
    let hash = |fragment: &str| {
        let digest = Sha256::new()
            .chain_update(recipe.trim())
            .chain_update(fragment)
            .finalize();
        digest[..6].iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    };
    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("config_hash.rs");
    std::fs::write(
        out,
        format!(
            "const MICROVM_CONFIG_HASH: &str = {:?};\nconst PORTABLE_CONFIG_HASH: &str = {:?};\n",
            hash(&microvm),
            hash(&portable)
        ),
    )
    .expect("writing OUT_DIR/config_hash.rs");
}
