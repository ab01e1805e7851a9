//! husk-pull REF: pull an image from a registry into husk's cache (an OCI
//! layout under `pulls/`, blobs under `blobs/sha256/`) and print the
//! layout's folder. `husk build docker://...` runs it for images it has
//! not pulled yet; run it yourself to refresh a tag.

use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [reference] = args.as_slice() else {
        eprintln!("usage: husk-pull docker://HOST[:PORT]/REPO[:TAG|@DIGEST]");
        return ExitCode::from(2);
    };
    let cache = match builder::cache::root() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("husk-pull: cannot find husk's cache folder: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tty = std::io::stderr().is_terminal();
    let mut progress = |step: &str| {
        if tty {
            eprintln!("husk-pull: {step}");
        }
    };
    match builder::oci::registry::pull(reference, &cache, &mut progress) {
        Ok(dir) => {
            println!("{}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("husk-pull: {text}");
            ExitCode::FAILURE
        }
    }
}
