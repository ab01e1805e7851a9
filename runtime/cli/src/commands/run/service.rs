//! What `husk run -d` keeps of a service besides its command: its health
//! check (docker's `--health-*` flags over the appliance's
//! `[run.health]`), how it is stopped (`--stop-signal`, `--stop-timeout`
//! over the image's STOPSIGNAL and the appliance's `run.stop_signal` and
//! `run.stop_timeout`), and how much of its console log is kept
//! (`--log-driver`, `--log-opt` as docker's json-file driver takes them).

use std::time::Duration;

use appliance_spec::Signal;

use crate::vms::keeper::{Check, HealthCheck, OnFailure};
use crate::vms::log::Limits;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServiceArgs {
    /// The signal husk stop sends the command first (default: the
    /// appliance's run.stop_signal, else the image's STOPSIGNAL, else TERM)
    #[arg(long, value_name = "SIGNAL")]
    pub(super) stop_signal: Option<Signal>,
    /// With -d: seconds husk stop waits for the command before SIGKILL
    /// (default: the appliance's run.stop_timeout, else 10)
    #[arg(long, value_name = "SECS", requires = "detach")]
    stop_timeout: Option<u32>,
    /// With -d: a health check, run in the guest with /bin/sh -c (as
    /// docker's); it replaces the appliance's [run.health] check
    #[arg(long, value_name = "COMMAND", requires = "detach")]
    health_cmd: Option<String>,
    /// Between health checks (default 30s)
    #[arg(long, value_name = "DURATION", value_parser = super::super::parse_go_duration)]
    health_interval: Option<Duration>,
    /// How long one check may take (default 30s)
    #[arg(long, value_name = "DURATION", value_parser = super::super::parse_go_duration)]
    health_timeout: Option<Duration>,
    /// Failures in a row that make the appliance unhealthy (default 3)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    health_retries: Option<u32>,
    /// Failures this soon after the start do not count, until a check
    /// passes (default 0s)
    #[arg(long, value_name = "DURATION", value_parser = super::super::parse_go_duration)]
    health_start_period: Option<Duration>,
    /// What to do when the appliance turns unhealthy: none, kill (its
    /// restart policy then applies), restart (whatever the policy), stop
    #[arg(long, value_name = "ACTION", value_enum, default_value_t = OnFailure::None)]
    pub(super) health_on_failure: OnFailure,
    /// No health check, not even the appliance's
    #[arg(long, conflicts_with_all = [
        "health_cmd", "health_interval", "health_timeout", "health_retries", "health_start_period",
    ])]
    no_healthcheck: bool,
    /// json-file or local: both are husk's own console log of a detached
    /// run, which husk logs reads (a foreground run keeps none); none: no
    /// log is kept (husk attach still shows the output as it comes)
    #[arg(long, value_name = "DRIVER", value_enum)]
    log_driver: Option<LogDriver>,
    /// For -d's log: max-size=SIZE (a log file's size before it is
    /// rotated: 10m, 1g, bytes; default 1m), max-file=N (files kept,
    /// default 2), compress=false; repeatable
    #[arg(long, value_name = "OPT=VALUE", value_parser = parse_log_opt)]
    log_opt: Vec<LogOpt>,
}

/// docker's log drivers that keep the log where `docker logs` reads it
/// (husk's own log is both), and `none`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum LogDriver {
    #[value(name = "json-file")]
    JsonFile,
    Local,
    None,
}

impl LogDriver {
    fn word(self) -> &'static str {
        match self {
            LogDriver::JsonFile => "json-file",
            LogDriver::Local => "local",
            LogDriver::None => "none",
        }
    }
}

/// One `--log-opt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOpt {
    MaxSize(u64),
    MaxFile(u32),
    /// `compress=false`: rotated files stay as they are (husk does not
    /// compress them).
    Uncompressed,
}

/// `--log-opt KEY=VALUE`, as docker's json-file driver reads it.
pub fn parse_log_opt(arg: &str) -> Result<LogOpt, String> {
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?}: give OPT=VALUE (max-size=10m, max-file=3)"))?;
    match key {
        "max-size" => {
            let bytes = match value.parse::<u64>() {
                Ok(b) => Some(b),
                Err(_) => super::super::docker_size(value).map_err(|e| format!("max-size: {e}"))?,
            };
            match bytes {
                Some(b) if b > 0 => Ok(LogOpt::MaxSize(b)),
                Some(_) => Err("max-size must be more than 0".into()),
                None => Err(format!("max-size={value}: too large")),
            }
        }
        "max-file" => match value.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(LogOpt::MaxFile(n)),
            _ => Err(format!(
                "max-file={value}: give a number of files, 1 or more"
            )),
        },
        "compress" => match value {
            "false" => Ok(LogOpt::Uncompressed),
            "true" => Err("compress=true: husk keeps rotated log files uncompressed".into()),
            _ => Err(format!("compress={value}: give true or false")),
        },
        other => Err(format!(
            "unknown log opt {other:?}: husk's log takes max-size, max-file and compress=false"
        )),
    }
}

/// How much of the console log the keeper keeps: `--log-opt` over the
/// defaults (1 MiB files, two of them); `None` for `--log-driver none`.
pub fn log_limits(args: &ServiceArgs) -> Option<Limits> {
    if !keeps_log(args) {
        return None;
    }
    let mut limits = Limits::default();
    for opt in &args.log_opt {
        match *opt {
            LogOpt::MaxSize(b) => limits.max_size = b,
            LogOpt::MaxFile(n) => limits.max_files = n,
            LogOpt::Uncompressed => {}
        }
    }
    Some(limits)
}

/// Whether the run keeps a console log (all but `--log-driver none`).
pub fn keeps_log(args: &ServiceArgs) -> bool {
    args.log_driver != Some(LogDriver::None)
}

/// `HostConfig.LogConfig` as docker inspect shows it: the driver, and the
/// options given (as docker's json-file driver writes them back).
pub fn log_config(args: &ServiceArgs) -> serde_json::Value {
    let mut config = serde_json::Map::new();
    for opt in &args.log_opt {
        let (key, value) = match *opt {
            LogOpt::MaxSize(b) => ("max-size", size_word(b)),
            LogOpt::MaxFile(n) => ("max-file", n.to_string()),
            LogOpt::Uncompressed => ("compress", "false".into()),
        };
        config.insert(key.into(), value.into());
    }
    serde_json::json!({
        "Type": args.log_driver.unwrap_or(LogDriver::JsonFile).word(),
        "Config": config,
    })
}

/// A size in docker's words: `10m` for 10 MiB, bytes when no unit fits.
fn size_word(bytes: u64) -> String {
    for (shift, unit) in [(30, "g"), (20, "m"), (10, "k")] {
        if bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// The seconds `husk stop` waits by default: `--stop-timeout` over the
/// appliance's `run.stop_timeout`.
pub fn stop_timeout(args: &ServiceArgs, appliance: Option<&appliance_spec::Run>) -> Option<u32> {
    args.stop_timeout.or(appliance.and_then(|r| r.stop_timeout))
}

/// The health check this run's keeper runs: the flags over the
/// appliance's `[run.health]`, over the image's HEALTHCHECK (`None` for
/// none).
pub fn resolve(
    args: &ServiceArgs,
    appliance: Option<&appliance_spec::Health>,
    image: Option<&husk_init::config::ImageHealthcheck>,
) -> anyhow::Result<Option<HealthCheck>> {
    if args.no_healthcheck {
        return Ok(None);
    }
    let secs = |s: u32| Duration::from_secs(s.into());
    let base = match (&args.health_cmd, appliance) {
        (Some(cmd), _) => HealthCheck {
            check: Check::Command(vec!["/bin/sh".into(), "-c".into(), cmd.clone()]),
            interval: secs(30),
            timeout: secs(30),
            retries: 3,
            start_period: Duration::ZERO,
            on_failure: OnFailure::None,
            stop_grace: secs(10),
        },
        (None, Some(h)) => HealthCheck {
            check: match (h.tcp, &h.command) {
                (Some(port), _) => Check::Tcp(port),
                (None, Some(argv)) => Check::Command(argv.clone()),
                (None, None) => anyhow::bail!("[run.health] names no check"),
            },
            interval: secs(h.interval),
            timeout: secs(h.timeout),
            retries: h.retries,
            start_period: secs(h.start_period),
            on_failure: OnFailure::None,
            stop_grace: secs(10),
        },
        (None, None) if image.is_some() => {
            let h = image.expect("matched");
            let ms = Duration::from_millis;
            HealthCheck {
                check: Check::Command(h.command.clone()),
                interval: ms(h.interval_ms),
                timeout: ms(h.timeout_ms),
                retries: h.retries,
                start_period: ms(h.start_period_ms),
                on_failure: OnFailure::None,
                stop_grace: secs(10),
            }
        }
        (None, None) => {
            let tuned = args.health_interval.is_some()
                || args.health_timeout.is_some()
                || args.health_retries.is_some()
                || args.health_start_period.is_some()
                || args.health_on_failure != OnFailure::None;
            if tuned {
                anyhow::bail!(
                    "--health-interval, --health-timeout, --health-retries, \
                     --health-start-period and --health-on-failure tune a health check: give \
                     --health-cmd, or run an appliance with [run.health] or an image with a \
                     HEALTHCHECK"
                );
            }
            return Ok(None);
        }
    };
    let positive = |flag: &str, d: Option<Duration>| -> anyhow::Result<Option<Duration>> {
        match d {
            Some(d) if d.is_zero() => anyhow::bail!("{flag} must be longer than 0s"),
            other => Ok(other),
        }
    };
    Ok(Some(HealthCheck {
        interval: positive("--health-interval", args.health_interval)?.unwrap_or(base.interval),
        timeout: positive("--health-timeout", args.health_timeout)?.unwrap_or(base.timeout),
        retries: args.health_retries.unwrap_or(base.retries),
        start_period: args.health_start_period.unwrap_or(base.start_period),
        on_failure: args.health_on_failure,
        stop_grace: base.stop_grace,
        check: base.check,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appliance(tcp: Option<u16>) -> appliance_spec::Health {
        appliance_spec::Health {
            tcp,
            command: tcp.is_none().then(|| vec!["pg_isready".into()]),
            interval: 5,
            timeout: 2,
            retries: 4,
            start_period: 10,
        }
    }

    #[test]
    fn flags_over_the_appliances_check() {
        let none = ServiceArgs::default();
        assert_eq!(resolve(&none, None, None).unwrap(), None);
        let from_app = resolve(&none, Some(&appliance(Some(80))), Some(&image()))
            .unwrap()
            .unwrap();
        assert_eq!(
            from_app,
            HealthCheck {
                check: Check::Tcp(80),
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                retries: 4,
                start_period: Duration::from_secs(10),
                on_failure: OnFailure::None,
                stop_grace: Duration::from_secs(10),
            }
        );
        // --health-cmd replaces the check, with docker's defaults; the
        // other flags tune either.
        let cmd = ServiceArgs {
            health_cmd: Some("test -e /ok".into()),
            health_retries: Some(1),
            ..ServiceArgs::default()
        };
        let h = resolve(&cmd, Some(&appliance(None)), Some(&image()))
            .unwrap()
            .unwrap();
        assert_eq!(
            h.check,
            Check::Command(vec!["/bin/sh".into(), "-c".into(), "test -e /ok".into()])
        );
        assert_eq!((h.interval, h.retries), (Duration::from_secs(30), 1));
        let tuned = ServiceArgs {
            health_interval: Some(Duration::from_millis(500)),
            ..ServiceArgs::default()
        };
        let h = resolve(&tuned, Some(&appliance(None)), None)
            .unwrap()
            .unwrap();
        assert_eq!(h.check, Check::Command(vec!["pg_isready".into()]));
        assert_eq!(h.interval, Duration::from_millis(500));
        // Tuning nothing, or to zero, is an error; --no-healthcheck wins.
        let err = resolve(&tuned, None, None).unwrap_err().to_string();
        assert!(err.contains("give --health-cmd"), "{err}");
        let zero = ServiceArgs {
            health_timeout: Some(Duration::ZERO),
            ..cmd.clone()
        };
        assert!(resolve(&zero, None, None).is_err());
        let off = ServiceArgs {
            no_healthcheck: true,
            ..ServiceArgs::default()
        };
        assert_eq!(
            resolve(&off, Some(&appliance(Some(80))), Some(&image())).unwrap(),
            None
        );
        // The image's HEALTHCHECK when nothing else gives one; the flags
        // tune it.
        let h = resolve(&tuned, None, Some(&image())).unwrap().unwrap();
        assert_eq!(
            h,
            HealthCheck {
                check: Check::Command(vec!["curl".into(), "-f".into(), "http://localhost/".into()]),
                interval: Duration::from_millis(500),
                timeout: Duration::from_secs(3),
                retries: 2,
                start_period: Duration::from_millis(1500),
                on_failure: OnFailure::None,
                stop_grace: Duration::from_secs(10),
            }
        );
    }

    fn image() -> husk_init::config::ImageHealthcheck {
        husk_init::config::ImageHealthcheck {
            command: vec!["curl".into(), "-f".into(), "http://localhost/".into()],
            interval_ms: 5000,
            timeout_ms: 3000,
            start_period_ms: 1500,
            retries: 2,
        }
    }

    #[test]
    fn log_opts_are_read_as_dockers_json_file_driver_reads_them() {
        assert_eq!(parse_log_opt("max-size=10m"), Ok(LogOpt::MaxSize(10 << 20)));
        assert_eq!(parse_log_opt("max-size=4096"), Ok(LogOpt::MaxSize(4096)));
        assert_eq!(parse_log_opt("max-file=3"), Ok(LogOpt::MaxFile(3)));
        assert_eq!(parse_log_opt("compress=false"), Ok(LogOpt::Uncompressed));
        for (bad, says) in [
            ("max-size", "give OPT=VALUE"),
            ("max-size=0", "more than 0"),
            ("max-size=lots", "max-size:"),
            ("max-file=0", "1 or more"),
            ("max-file=-1", "1 or more"),
            ("compress=true", "uncompressed"),
            ("labels=a", "unknown log opt \"labels\""),
        ] {
            let e = parse_log_opt(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let args = ServiceArgs {
            log_opt: vec![LogOpt::MaxFile(5), LogOpt::MaxSize(1 << 10)],
            ..ServiceArgs::default()
        };
        assert_eq!(
            log_limits(&args),
            Some(Limits {
                max_size: 1 << 10,
                max_files: 5
            })
        );
        assert_eq!(
            log_config(&args),
            serde_json::json!({"Type": "json-file", "Config": {"max-file": "5", "max-size": "1k"}})
        );
        assert_eq!(log_limits(&ServiceArgs::default()), Some(Limits::default()));
        let none = ServiceArgs {
            log_driver: Some(LogDriver::None),
            ..ServiceArgs::default()
        };
        assert_eq!(log_limits(&none), None);
        assert_eq!(
            log_config(&none),
            serde_json::json!({"Type": "none", "Config": {}})
        );
        assert_eq!(
            [size_word(10 << 20), size_word(3 << 30), size_word(1500)],
            ["10m", "3g", "1500"]
        );
    }
}
