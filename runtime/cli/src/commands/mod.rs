//! One file per `husk` command: parse arguments, call the libraries, print.

pub mod attach;
pub mod build;
pub mod cp;
mod env;
pub mod exec;
pub mod export;
pub mod image;
pub mod inspect;
pub mod kernel;
mod listing;
pub mod login;
pub mod logs;
pub mod network;
pub mod pause;
pub mod port;
pub mod ps;
pub mod pull;
pub mod rename;
pub mod rm;
pub mod run;
pub mod snapshot;
pub mod start;
pub mod stats;
pub mod stop;
pub mod system;
mod target;
pub mod top;
pub mod update;
pub mod validate;
pub mod volume;
pub mod wait;

/// Asks `what?` on stderr and reads y or yes from stdin.
pub(crate) fn confirm(what: &str) -> anyhow::Result<bool> {
    use std::io::BufRead;
    eprint!("husk: {what}? [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| anyhow::anyhow!("cannot read the answer: {e}"))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Runs `f` for each name, as docker's commands over several containers
/// do: a failure is reported on stderr and the others still run; the
/// status says whether any failed.
pub(crate) fn each_name(
    names: &[String],
    mut f: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<std::process::ExitCode> {
    let mut failed = false;
    for name in names {
        if let Err(e) = f(name) {
            eprintln!("husk: {e:#}");
            failed = true;
        }
    }
    Ok(if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// A Go duration (numbers, each with its unit: `h`, `m`, `s`, `ms`,
/// `us`, `ns`), in seconds; `None` for anything else.
pub fn go_duration(text: &str) -> Option<f64> {
    let number = |c: char| c.is_ascii_digit() || c == '.';
    let mut rest = text;
    let mut total = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest.find(|c| !number(c)).unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest.find(number).unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * unit;
        rest = &rest[u..];
    }
    Some(total)
}

/// A Go duration as a clap value (`--health-interval 30s`).
pub fn parse_go_duration(text: &str) -> Result<std::time::Duration, String> {
    go_duration(text)
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| format!("{text:?} is not a duration: write e.g. 30s, 1m30s, 500ms"))
}

/// A size as docker takes one (`512m`, `2g`, `1gb`: binary units in
/// any case, `b` for bytes) or as husk writes it (`512MiB`); `None` when
/// it is past what a u64 holds.
pub fn docker_size(text: &str) -> Result<Option<u64>, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "{text:?} is not a size: write e.g. 512m, 2g or 512MiB"
            ))
        }
    };
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a size: write e.g. 512m, 2g or 512MiB"
        ));
    }
    // Only digits: a number too long for a u64.
    Ok(digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift)))
}

/// Guest memory in MiB from `--memory`.
pub fn memory_mib(arg: &str) -> anyhow::Result<u64> {
    let bytes = match arg.parse::<u64>() {
        Ok(mib) => mib.checked_mul(1 << 20),
        Err(_) => docker_size(arg).map_err(|e| anyhow::anyhow!("--memory: {e}"))?,
    };
    let max = vmm::MAX_MEMORY_MIB << 20;
    let bytes = bytes.filter(|b| *b <= max).ok_or_else(|| {
        anyhow::anyhow!(
            "--memory {arg}: more than husk gives a VM (at most {} MiB)",
            vmm::MAX_MEMORY_MIB
        )
    })?;
    if bytes < appliance_spec::Vm::MIN_MEMORY.0 || bytes % (1 << 20) != 0 {
        anyhow::bail!("--memory {arg}: give a whole number of MiB, at least 32MiB");
    }
    Ok(bytes >> 20)
}

/// A size on disk as `ls` commands show it: KiB under a MiB, MiB under a
/// GiB, else GiB.
pub fn human_size(bytes: u64) -> String {
    const MIB: f64 = (1 << 20) as f64;
    if bytes < 1 << 20 {
        format!("{}KiB", bytes.div_ceil(1024))
    } else if bytes < 1 << 30 {
        format!("{:.1}MiB", bytes as f64 / MIB)
    } else {
        format!("{:.1}GiB", bytes as f64 / MIB / 1024.0)
    }
}

/// What a `prune` removes: its key (printed once removed; none for a
/// leftover), the bytes it frees, and how to remove it.
pub type Doomed<'a> = (
    Option<String>,
    u64,
    Box<dyn FnOnce() -> anyhow::Result<()> + 'a>,
);

/// Removes each of `doomed`, printing each key removed on stdout and the
/// bytes freed on stderr; one that cannot be removed is reported and the
/// rest still go. Fails if any could not be removed.
pub fn prune<'a>(doomed: impl IntoIterator<Item = Doomed<'a>>) -> std::process::ExitCode {
    let (freed, failed) = remove_each(doomed);
    eprintln!("husk: freed {}", human_size(freed));
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// Removes each of `doomed` as [`prune`] does, saying nothing of the
/// total: the bytes freed, and whether any could not be removed.
pub fn remove_each<'a>(doomed: impl IntoIterator<Item = Doomed<'a>>) -> (u64, bool) {
    let (mut freed, mut failed) = (0, false);
    for (key, bytes, remove) in doomed {
        match remove() {
            Ok(()) => {
                freed += bytes;
                if let Some(key) = key {
                    println!("{key}");
                }
            }
            Err(e) => {
                eprintln!("husk: {e:#}");
                failed = true;
            }
        }
    }
    (freed, failed)
}

/// Rows in columns as `ps`-like commands print them: each cell padded to
/// its column's widest, three spaces apart, the last column as it is.
pub fn print_columns(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// What `husk system df` shows of one kind: how many, how many in use,
/// the bytes all take, and the bytes `prune` would free.
#[derive(Debug, Default, Clone, Copy)]
pub struct Space {
    pub total: usize,
    pub active: usize,
    pub bytes: u64,
    pub reclaimable: u64,
}

#[cfg(test)]
mod tests {
    use super::{docker_size, memory_mib};

    #[test]
    fn guest_memory_is_a_number_of_mib_or_a_size_and_is_bounded() {
        for (arg, mib) in [("256", 256), ("512m", 512), ("2g", 2048), ("1GiB", 1024)] {
            assert_eq!(memory_mib(arg).unwrap(), mib, "{arg}");
        }
        for (arg, why) in [
            ("17592186044544", "more than husk gives a VM"),
            ("99999999999999999999g", "more than husk gives a VM"),
            ("16m", "at least 32MiB"),
            ("33554433b", "whole number of MiB"),
            ("1.5g", "is not a size"),
        ] {
            let e = memory_mib(arg).unwrap_err().to_string();
            assert!(e.contains(why), "{arg}: {e}");
        }
    }

    #[test]
    fn sizes_are_taken_as_docker_and_husk_write_them() {
        for (text, bytes) in [
            ("512m", 512 << 20),
            ("512M", 512 << 20),
            ("512mb", 512 << 20),
            ("512MiB", 512 << 20),
            ("2g", 2 << 30),
            ("1GB", 1 << 30),
            ("64k", 64 << 10),
            ("4096b", 4096),
        ] {
            assert_eq!(docker_size(text), Ok(Some(bytes)), "{text}");
        }
        assert_eq!(docker_size("99999999999999999999m"), Ok(None));
        assert_eq!(docker_size("16777216t"), Ok(None));
        for bad in ["", "m", "12x", "1.5g", "-1m", "12 m"] {
            assert!(docker_size(bad).is_err(), "{bad}");
        }
    }
}
