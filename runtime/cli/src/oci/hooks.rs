//! OCI hooks, run on the host as runc runs them, each with the container's
//! state (JSON) on its stdin: `prestart` and `createRuntime` during
//! `create`, once the container's network namespace exists and before its
//! VM boots (docker's `libnetwork-setkey` moves the container's interface
//! into that namespace from a prestart hook); `poststart` after `start`;
//! `poststop` after `delete`. `createContainer` and `startContainer` run
//! in the container's own namespaces, which are inside the VM, where no
//! host program can run: a spec with them is refused.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use oci_spec::runtime::{Hook, Hooks};

/// The most of a hook's output kept for an error message.
const OUTPUT_KEPT: usize = 4096;

/// Refuses hooks husk cannot run where the spec says they run.
pub fn check(hooks: &Hooks) -> anyhow::Result<()> {
    for (kind, list) in [
        ("createContainer", hooks.create_container()),
        ("startContainer", hooks.start_container()),
    ] {
        if list.as_ref().is_some_and(|l| !l.is_empty()) {
            anyhow::bail!(
                "config.json has {kind} hooks: they run in the container's namespaces, \
                 which are inside the VM, where a host program cannot run"
            );
        }
    }
    Ok(())
}

/// The hooks `create` runs before the VM boots: prestart, then
/// createRuntime.
pub fn before_boot(hooks: &Hooks) -> Vec<(&'static str, &Hook)> {
    let mut all = Vec::new();
    for (kind, list) in [
        ("prestart", hooks.prestart()),
        ("createRuntime", hooks.create_runtime()),
    ] {
        all.extend(list.iter().flatten().map(|h| (kind, h)));
    }
    all
}

/// Runs `hooks` in order, each given `state`; the first that fails (or
/// outlives its timeout, and is killed) ends the run with its reason.
pub fn run(hooks: &[(&'static str, &Hook)], state: &[u8]) -> anyhow::Result<()> {
    for (kind, hook) in hooks {
        run_one(hook, state).with_context(|| format!("{kind} hook {}", hook.path().display()))?;
    }
    Ok(())
}

fn run_one(hook: &Hook, state: &[u8]) -> anyhow::Result<()> {
    let mut cmd = Command::new(hook.path());
    if let Some((argv0, rest)) = hook.args().as_deref().and_then(<[String]>::split_first) {
        cmd.arg0(argv0).args(rest);
    }
    // Its environment is the spec's, and only that (as runc gives it).
    cmd.env_clear();
    for pair in hook.env().iter().flatten() {
        if let Some((key, value)) = pair.split_once('=') {
            cmd.env(key, value);
        }
    }
    let (mut output, writer) = std::io::pipe().context("a pipe for its output")?;
    cmd.stdin(Stdio::piped())
        .stdout(writer.try_clone()?)
        .stderr(writer);
    let mut child = cmd.spawn().context("cannot start it")?;
    drop(cmd);
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state is no error.
        let _ = stdin.write_all(state);
    }
    // Read aside: a hook that fills the pipe must not stall on us.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let _ = (&mut output)
            .take(OUTPUT_KEPT as u64)
            .read_to_end(&mut kept);
        let _ = std::io::copy(&mut output, &mut std::io::sink());
        let _ = tx.send(kept);
    });
    let limit = match hook.timeout() {
        Some(secs) if secs > 0 => Some(Duration::from_secs(secs.unsigned_abs())),
        Some(secs) => anyhow::bail!("timeout {secs}: a hook's timeout is more than 0 seconds"),
        None => None,
    };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if limit.is_some_and(|l| started.elapsed() >= l) {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "killed after its timeout of {} s",
                limit.unwrap_or_default().as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if status.success() {
        return Ok(());
    }
    // What it said, if its writers are gone (a daemon it left may hold them).
    let said = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    anyhow::bail!("{status}: {}", String::from_utf8_lossy(&said).trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::HookBuilder;

    fn sh(script: &str, timeout: Option<i64>) -> Hook {
        let mut b = HookBuilder::default()
            .path("/bin/sh")
            .args(vec!["sh".into(), "-c".into(), script.into()])
            .env(vec!["HOOK_WORD=from-the-spec".into()]);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().unwrap()
    }

    #[test]
    fn a_hook_reads_the_state_with_the_specs_env_only() {
        let dir = std::env::temp_dir().join(format!("husk-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("seen");
        let hook = sh(
            &format!(
                "cat > {0}; echo \"$HOOK_WORD ${{HOME:-no-home}}\" >> {0}",
                out.display()
            ),
            None,
        );
        run(&[("prestart", &hook)], br#"{"id":"c1"}"#).unwrap();
        let seen = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(seen, "{\"id\":\"c1\"}from-the-spec no-home\n");
    }

    #[test]
    fn a_failing_hook_says_why_and_a_slow_one_is_killed() {
        let failing = sh("echo no network for you >&2; exit 3", None);
        let e = run(&[("prestart", &failing)], b"{}").unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("prestart hook /bin/sh"), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains("no network for you"), "{text}");

        let slow = sh("sleep 30", Some(1));
        let started = Instant::now();
        let e = run(&[("createRuntime", &slow)], b"{}").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(format!("{e:#}").contains("timeout of 1 s"), "{e:#}");

        let missing = HookBuilder::default()
            .path("/nonexistent/hook")
            .build()
            .unwrap();
        assert!(run(&[("prestart", &missing)], b"{}").is_err());
    }

    #[test]
    fn hooks_inside_the_container_are_refused() {
        let hooks = oci_spec::runtime::HooksBuilder::default()
            .create_container(vec![sh("true", None)])
            .build()
            .unwrap();
        assert!(format!("{:#}", check(&hooks).unwrap_err()).contains("createContainer"));
        let fine = oci_spec::runtime::HooksBuilder::default()
            .prestart(vec![sh("true", None)])
            .build()
            .unwrap();
        check(&fine).unwrap();
        assert_eq!(before_boot(&fine).len(), 1);
    }
}
