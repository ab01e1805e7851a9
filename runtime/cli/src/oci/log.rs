//! husk-runtime's errors: on stderr, and in `--log` in the format its
//! caller reads back (conmon and containerd's shim read the last JSON
//! error line to tell their user why).

use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub struct Logger {
    file: Option<PathBuf>,
    format: Format,
}

impl Logger {
    pub fn new(file: Option<PathBuf>, format: Format, _debug: bool) -> Self {
        Logger { file, format }
    }

    pub fn error(&self, message: &str) {
        eprintln!("husk-runtime: {message}");
        let Some(path) = &self.file else { return };
        let time = rfc3339(SystemTime::now());
        let line = match self.format {
            Format::Json => {
                serde_json::json!({"level": "error", "msg": message, "time": time}).to_string()
            }
            Format::Text => format!("time=\"{time}\" level=error msg={message:?}"),
        };
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            eprintln!("husk-runtime: cannot write --log {}: {e}", path.display());
        }
    }
}

/// `t` as RFC 3339 in UTC with nanoseconds, as runc writes times.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil, for the proleptic Gregorian calendar.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |s| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(at(1_795_000_000), "2026-11-18T11:06:40.000000000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::new(86_399, 5)),
            "1970-01-01T23:59:59.000000005Z"
        );
    }
}
