//! Build bench: `husk build` of an appliance and of an image, cold (an
//! empty cache each run) and cached (the same inputs again), median, min
//! and max of N runs. Run it through `ci/bench-build`.
//!
//!   bench-build [--runs N] TARGET...
//!
//! Cold includes everything a first build does: reading the image's
//! blobs, unpacking every layer, the appliance's files, mkfs, the
//! reproducibility pass and e2fsck. No KVM is needed.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use boot_tests::husk::husk_bin;
use boot_tests::stats;

fn main() -> ExitCode {
    boot_tests::targets_main("bench-build", 5, bench)
}

/// Seconds for one `husk build TARGET` with `cache`, and the image's size.
fn build(bin: &Path, target: &str, cache: &Path) -> Result<(f64, u64), String> {
    let start = Instant::now();
    let out = Command::new(bin)
        .arg("build")
        .arg(target)
        .env("HUSK_CACHE_DIR", cache)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "husk build {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let image = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let size = std::fs::metadata(&image).map_err(|e| e.to_string())?.len();
    Ok((secs, size))
}

fn bench(runs: usize, targets: &[String]) -> Result<(), String> {
    let bin = husk_bin()?;
    println!("husk build, {runs} runs each, seconds:");
    println!("{:<58} {:>8} {:>8} {:>8}", "", "median", "min", "max");
    for target in targets {
        let (mut cold, mut cached) = (Vec::new(), Vec::new());
        let mut size = 0;
        for _ in 0..runs {
            let cache = tempfile::tempdir().map_err(|e| e.to_string())?;
            let (secs, s) = build(&bin, target, cache.path())?;
            cold.push(secs);
            size = s;
            for _ in 0..2 {
                cached.push(build(&bin, target, cache.path())?.0);
            }
        }
        let name = Path::new(target)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| target.clone());
        for (kind, v) in [("cold", &cold), ("cached", &cached)] {
            let (m, lo, hi) = stats(v);
            let label = format!("{name} ({kind}, image {:.1} MiB)", size as f64 / 1048576.0);
            println!("{label:<58} {m:>8.3} {lo:>8.3} {hi:>8.3}");
        }
    }
    Ok(())
}
