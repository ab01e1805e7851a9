//! `husk run -d --restart`: docker's restart policies, kept by the keeper.
//!
//! When a detached appliance's command ends, its keeper starts it again
//! (a new VM, as `husk start` would) if the policy says so: `always` and
//! `unless-stopped` whatever the status, `on-failure[:N]` on a status
//! other than 0 (at most N times). Not after `husk stop`, nor after a
//! `husk kill` with a signal that ends a process (KILL, TERM, INT, QUIT;
//! a HUP or USR1 asks the command to do something, and keeps the policy),
//! and not when the VM never got its command started. Restarts wait as
//! docker's do: 100 ms, doubled after each run shorter than 10 s, at most
//! a minute. husk has no daemon: after the host restarts, `husk start
//! --at-boot` (a systemd unit runs it) starts again every appliance whose
//! policy is `always`, and every `unless-stopped` one that was not
//! stopped, as docker's daemon does when it starts.

use std::time::Duration;

/// A restart policy, as `--restart` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    No,
    OnFailure {
        max: Option<u32>,
    },
    Always,
    UnlessStopped,
}

/// The first delay before a restart, and the longest.
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run at least this long starts the delays over.
const GOOD_RUN: Duration = Duration::from_secs(10);

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, max) = match s.split_once(':') {
            Some((name, max)) => (name, Some(max)),
            None => (s, None),
        };
        let policy = match name {
            "no" => Policy::No,
            "always" => Policy::Always,
            "unless-stopped" => Policy::UnlessStopped,
            "on-failure" => Policy::OnFailure {
                // As docker's: 0 is no limit.
                max: max
                    .map(|m| {
                        m.parse()
                            .map_err(|_| format!("{m:?} is not a number of restarts"))
                    })
                    .transpose()?
                    .filter(|&m: &u32| m != 0),
            },
            _ => {
                return Err(format!(
                    "{s:?}: write no, always, unless-stopped or on-failure[:MAX-RESTARTS]"
                ))
            }
        };
        if max.is_some() && !matches!(policy, Policy::OnFailure { .. }) {
            return Err(format!("{s:?}: only on-failure takes a number of restarts"));
        }
        Ok(policy)
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Policy::No => write!(f, "no"),
            Policy::OnFailure { max: None } => write!(f, "on-failure"),
            Policy::OnFailure { max: Some(n) } => write!(f, "on-failure:{n}"),
            Policy::Always => write!(f, "always"),
            Policy::UnlessStopped => write!(f, "unless-stopped"),
        }
    }
}

impl Policy {
    /// As `state.json` records it: none for `no`.
    pub fn recorded(&self) -> String {
        match self {
            Policy::No => String::new(),
            policy => policy.to_string(),
        }
    }

    /// Whether `husk start --at-boot` starts an appliance with this
    /// policy that `stopped` (`husk stop`) or not before the host went
    /// down.
    pub fn starts_at_boot(self, stopped: bool) -> bool {
        match self {
            Policy::Always => true,
            Policy::UnlessStopped => !stopped,
            Policy::No | Policy::OnFailure { .. } => false,
        }
    }

    /// Whether a command that ended with `code` (unknown: `None`) after
    /// `restarts` restarts so far is started again.
    pub fn restarts(self, code: Option<u8>, restarts: u32) -> bool {
        match self {
            Policy::No => false,
            Policy::Always | Policy::UnlessStopped => true,
            Policy::OnFailure { max } => code != Some(0) && max.is_none_or(|m| restarts < m),
        }
    }
}

/// The delay before the next restart, after one of `previous` (none: this
/// is the first) and a run of `ran`.
pub fn delay(previous: Option<Duration>, ran: Duration) -> Duration {
    match previous {
        Some(d) if ran < GOOD_RUN => (d * 2).min(MAX_DELAY),
        _ => FIRST_DELAY,
    }
}

/// Whether `husk kill` with `signal` stops the appliance for good (its
/// restart policy no longer applies).
pub fn stops_for_good(signal: i32) -> bool {
    [libc::SIGKILL, libc::SIGTERM, libc::SIGINT, libc::SIGQUIT].contains(&signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_as_docker_writes_them() {
        for (text, policy) in [
            ("no", Policy::No),
            ("always", Policy::Always),
            ("unless-stopped", Policy::UnlessStopped),
            ("on-failure", Policy::OnFailure { max: None }),
            ("on-failure:3", Policy::OnFailure { max: Some(3) }),
        ] {
            assert_eq!(text.parse::<Policy>().unwrap(), policy);
            assert_eq!(policy.to_string(), text);
        }
        assert_eq!("on-failure:0".parse(), Ok(Policy::OnFailure { max: None }));
        for bad in ["sometimes", "on-failure:x", "on-failure:-1", "always:3", ""] {
            assert!(bad.parse::<Policy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn which_ends_restart() {
        let on_failure = Policy::OnFailure { max: Some(2) };
        assert!(!on_failure.restarts(Some(0), 0));
        assert!(on_failure.restarts(Some(3), 0));
        assert!(on_failure.restarts(None, 1));
        assert!(!on_failure.restarts(Some(3), 2), "at most 2 restarts");
        assert!(Policy::OnFailure { max: None }.restarts(Some(1), 1000));
        assert!(Policy::Always.restarts(Some(0), 1000));
        assert!(Policy::UnlessStopped.restarts(Some(0), 0));
        assert!(!Policy::No.restarts(Some(1), 0));
    }

    #[test]
    fn at_boot_always_starts_and_unless_stopped_unless_it_was_stopped() {
        assert!(Policy::Always.starts_at_boot(true));
        assert!(Policy::UnlessStopped.starts_at_boot(false));
        assert!(!Policy::UnlessStopped.starts_at_boot(true));
        assert!(!Policy::No.starts_at_boot(false));
        assert!(!Policy::OnFailure { max: None }.starts_at_boot(false));
    }

    #[test]
    fn delays_double_to_a_minute_and_start_over_after_a_good_run() {
        let quick = Duration::from_secs(1);
        let mut d = delay(None, quick);
        assert_eq!(d, FIRST_DELAY);
        d = delay(Some(d), quick);
        assert_eq!(d, Duration::from_millis(200));
        for _ in 0..20 {
            d = delay(Some(d), quick);
        }
        assert_eq!(d, MAX_DELAY);
        assert_eq!(delay(Some(d), GOOD_RUN), FIRST_DELAY);
    }

    #[test]
    fn only_ending_signals_stop_for_good() {
        assert!(stops_for_good(libc::SIGKILL) && stops_for_good(libc::SIGTERM));
        assert!(!stops_for_good(libc::SIGHUP) && !stops_for_good(libc::SIGUSR1));
    }
}
