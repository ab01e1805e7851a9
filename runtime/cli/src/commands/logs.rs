//! `husk logs`: a detached appliance's console, as `docker logs` shows a
//! container's: all of it or its last lines, with the time each line
//! arrived, since or until a time, and as it grows.

use std::io::Write;
use std::process::ExitCode;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::vms::{log, Status, VmDir};

#[derive(clap::Args)]
pub struct Args {
    /// Keep printing what the appliance writes, until it stops
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines
    #[arg(short = 'n', long, value_name = "N")]
    tail: Option<usize>,
    /// Each line after the time it arrived (RFC 3339, UTC)
    #[arg(short, long)]
    timestamps: bool,
    /// Lines since this time: a duration before now (10m, 1h30m, 42s), an
    /// RFC 3339 time (2026-12-02T04:20:00Z; without a zone, UTC; or a
    /// date), or seconds since the epoch
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Lines until this time (as --since takes it)
    #[arg(long, value_name = "TIME", conflicts_with = "follow")]
    until: Option<String>,
    name: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let vm = VmDir::find(&args.name)?;
    let state = vm.current_state()?;
    if crate::parse_run_args(&state.args).is_ok_and(|a| !a.keeps_log()) {
        anyhow::bail!(
            "{} keeps no log: it runs with --log-driver none (husk attach {} shows its output \
             as it comes)",
            args.name,
            args.name
        );
    }
    let path = vm.log();
    let now = OffsetDateTime::now_utc();
    let when = |flag: &str, value: &Option<String>| -> anyhow::Result<Option<i128>> {
        value
            .as_deref()
            .map(|v| {
                parse_time(v, now).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{flag} {v:?}: expected a duration (10m, 1h30m), an RFC 3339 time \
                         (2026-12-02T04:20:00Z), a date (2026-12-02) or seconds since the epoch"
                    )
                })
            })
            .transpose()
    };
    let select = log::Select {
        lines: args.tail,
        since: when("--since", &args.since)?,
        until: when("--until", &args.until)?,
        timestamps: args.timestamps,
    };
    // What is there now, then (with -f) what comes after it.
    let (text, size) = log::read(&path, &select)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&text)?;
    out.flush()?;
    if args.follow {
        let done = || {
            vm.current_state()
                .map_or(true, |s| s.status == Status::Exited)
        };
        if path.exists() {
            log::follow(&path, size, &select, &mut out, done)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A time as docker's `--since` and `--until` take it, in nanoseconds
/// since the epoch: a Go duration before `now` (`10m`, `1h30m`, `1.5h`,
/// `500ms`), seconds since the epoch (`1764649200`, `1764649200.5`), an
/// RFC 3339 time, one without its zone (UTC here, as on husk's hosts) or
/// a date.
fn parse_time(text: &str, now: OffsetDateTime) -> Option<i128> {
    let nanos = |secs: f64| (secs * 1e9) as i128;
    if let Some(secs) = super::go_duration(text) {
        return Some(now.unix_timestamp_nanos() - nanos(secs));
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return text.parse::<f64>().ok().map(nanos);
    }
    [
        text.to_string(),
        format!("{text}Z"),
        format!("{text}T00:00:00Z"),
    ]
    .iter()
    .find_map(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
    .map(|t| t.unix_timestamp_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_as_docker_takes_them() {
        let now = OffsetDateTime::from_unix_timestamp(1_764_649_200).unwrap();
        let s = |secs: i128| secs * 1_000_000_000;
        let cases = [
            ("10m", s(1_764_649_200 - 600)),
            ("1h30m", s(1_764_649_200 - 5400)),
            ("1.5h", s(1_764_649_200 - 5400)),
            ("500ms", s(1_764_649_200) - 500_000_000),
            ("1764649000", s(1_764_649_000)),
            ("1764649000.5", s(1_764_649_000) + 500_000_000),
            // A number alone is seconds since the epoch, never a duration.
            ("10", s(10)),
            ("2025-12-02T04:20:00Z", s(1_764_649_200)),
            ("2025-12-02T06:20:00+02:00", s(1_764_649_200)),
            ("2025-12-02T04:20:00.25Z", s(1_764_649_200) + 250_000_000),
            ("2025-12-02T04:20:00", s(1_764_649_200)),
            ("2025-12-02", s(1_764_633_600)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_time(text, now), Some(want), "{text}");
        }
        for bad in ["", "m", "10x", "1h30", "yesterday", "2025-12-32", "-5m"] {
            assert_eq!(parse_time(bad, now), None, "{bad}");
        }
    }
}
