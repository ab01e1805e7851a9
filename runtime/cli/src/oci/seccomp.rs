//! A spec's `linux.seccomp` profile compiled to the BPF programs the
//! guest's init installs on the container's process before it execs.
//!
//! A profile gives each listed system call (and argument condition) an
//! action, and one action to everything else; a BPF program gives one
//! action on a match and one otherwise (seccompiler's model). So the
//! profile becomes a stack of programs: one that lets every listed call
//! through and gives the default action to the rest, and one per other
//! action that gives it to its calls and lets the rest through. The kernel
//! runs every program of the stack and keeps the most restrictive answer
//! (kill, trap, errno, trace, log, allow), which is the profile's answer
//! for every call it lists once, as podman's and docker's profiles do.

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::Context;
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Linux's `EPERM`: the errno of `SCMP_ACT_ERRNO` when the profile gives
/// none (as runc does).
const EPERM: u32 = 1;

/// The programs for `profile`, each packed as [`agent::pack_bpf`] does,
/// in the order to install them.
pub fn compile(profile: &LinuxSeccomp) -> anyhow::Result<Vec<Vec<u64>>> {
    let default_errno = profile.default_errno_ret().unwrap_or(EPERM);
    let default = action(profile.default_action(), Some(default_errno))
        .context("linux.seccomp.defaultAction")?;
    // Every listed (call, rule) with its action; the action's programs.
    let mut listed: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut by_action: Vec<(SeccompAction, BTreeMap<i64, Vec<SeccompRule>>)> = Vec::new();
    for (n, entry) in profile.syscalls().iter().flatten().enumerate() {
        let what = || format!("linux.seccomp.syscalls[{n}]");
        let act = action(entry.action(), entry.errno_ret().or(Some(EPERM))).with_context(what)?;
        let conditions = entry
            .args()
            .iter()
            .flatten()
            .map(|a| {
                let index = u8::try_from(a.index())
                    .ok()
                    .filter(|i| *i < 6)
                    .with_context(|| format!("argument index {} (0 to 5)", a.index()))?;
                let (op, value) = match a.op() {
                    LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
                    LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
                    LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
                    LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
                    LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
                    LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
                    // libseccomp's (arg & value) == valueTwo.
                    LinuxSeccompOperator::ScmpCmpMaskedEq => (
                        SeccompCmpOp::MaskedEq(a.value()),
                        a.value_two().unwrap_or(0),
                    ),
                };
                SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                    .map_err(|e| anyhow::anyhow!("{e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(what)?;
        let rule = || -> anyhow::Result<Option<SeccompRule>> {
            if conditions.is_empty() {
                return Ok(None);
            }
            Ok(Some(
                SeccompRule::new(conditions.clone()).map_err(|e| anyhow::anyhow!("{e}"))?,
            ))
        };
        let slot = match by_action.iter().position(|(a, _)| *a == act) {
            Some(i) => i,
            None => {
                by_action.push((act.clone(), BTreeMap::new()));
                by_action.len() - 1
            }
        };
        for name in entry.names() {
            // A name this architecture has not (a profile lists every
            // architecture's): skipped, as runc skips it.
            let Ok(nr) = syscalls::Sysno::from_str(name) else {
                continue;
            };
            let nr = nr.id() as i64;
            for map in [&mut listed, &mut by_action[slot].1] {
                add(map, nr, rule().with_context(what)?);
            }
        }
    }
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(program(listed, default, SeccompAction::Allow)?);
    }
    for (act, calls) in by_action {
        if act != SeccompAction::Allow && !calls.is_empty() {
            programs.push(program(calls, SeccompAction::Allow, act)?);
        }
    }
    Ok(programs)
}

/// A call's rules: none (an empty list) matches every use of it; a call
/// listed once without conditions stays unconditional.
fn add(map: &mut BTreeMap<i64, Vec<SeccompRule>>, nr: i64, rule: Option<SeccompRule>) {
    match (map.get_mut(&nr), rule) {
        (Some(rules), Some(rule)) if !rules.is_empty() => rules.push(rule),
        (Some(rules), None) => rules.clear(),
        (Some(_), Some(_)) => {}
        (None, rule) => {
            map.insert(nr, rule.into_iter().collect());
        }
    }
}

fn program(
    calls: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> anyhow::Result<Vec<u64>> {
    let filter = SeccompFilter::new(calls, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| anyhow::anyhow!("linux.seccomp: {e}"))?;
    let bpf: BpfProgram = filter
        .try_into()
        .map_err(|e| anyhow::anyhow!("linux.seccomp: {e}"))?;
    Ok(bpf
        .iter()
        .map(|i| agent::pack_bpf(i.code, i.jt, i.jf, i.k))
        .collect())
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> anyhow::Result<SeccompAction> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(EPERM)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            anyhow::bail!("SCMP_ACT_NOTIFY: no seccomp agent reaches into a VM")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_allow_list_is_one_program_and_other_actions_one_each() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
            "architectures":["SCMP_ARCH_X86_64"],
            "syscalls":[
              {"names":["read","write","no_such_call"],"action":"SCMP_ACT_ALLOW"},
              {"names":["personality"],"action":"SCMP_ACT_ALLOW",
               "args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
              {"names":["clone"],"action":"SCMP_ACT_ALLOW",
               "args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
              {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
        );
        let programs = compile(&p).unwrap();
        assert_eq!(programs.len(), 2, "the default's and ENOSYS's");
        assert!(programs.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn a_block_list_needs_no_default_program() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        assert_eq!(compile(&p).unwrap().len(), 1);
        let none = profile(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#);
        assert!(compile(&none).unwrap().is_empty());
    }

    #[test]
    fn what_a_vm_cannot_do_is_refused_with_the_reason() {
        let notify = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        let e = format!("{:#}", compile(&notify).unwrap_err());
        assert!(e.contains("syscalls[0]") && e.contains("NOTIFY"), "{e}");
        let index = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO",
              "args":[{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        let e = format!("{:#}", compile(&index).unwrap_err());
        assert!(e.contains("argument index 6"), "{e}");
    }

    /// Runs `script` under `programs` (with no_new_privs, so no privilege
    /// is needed) on this host's kernel: (status, stdout and stderr).
    fn run_under(programs: &[Vec<u64>], script: &str) -> (i32, String) {
        use std::os::unix::process::CommandExt;
        let programs: Vec<Vec<libc::sock_filter>> = programs
            .iter()
            .map(|p| {
                p.iter()
                    .map(|i| {
                        let (code, jt, jf, k) = agent::unpack_bpf(*i);
                        libc::sock_filter { code, jt, jf, k }
                    })
                    .collect()
            })
            .collect();
        let mut command = std::process::Command::new("/bin/sh");
        command.args(["-c", script]);
        // SAFETY: between fork and exec the closure only makes prctl calls
        // on memory prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for p in &programs {
                    let prog = libc::sock_fprog {
                        len: p.len() as libc::c_ushort,
                        filter: p.as_ptr().cast_mut(),
                    };
                    let r = libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &prog as *const libc::sock_fprog,
                    );
                    if r != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }

    #[test]
    fn the_stacked_programs_answer_as_the_profile_says_on_a_real_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
              {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13},
              {"names":["symlink","symlinkat"],"action":"SCMP_ACT_ERRNO"},
              {"names":["unlinkat","unlink"],"action":"SCMP_ACT_ERRNO",
               "args":[{"index":2,"value":512,"valueTwo":512,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        let programs = compile(&p).unwrap();
        std::fs::create_dir(dir.path().join("keep")).unwrap();
        let d = dir.path().display();
        let script = format!(
            "cd {d} && touch f && echo touched; mkdir d; ln -s f l; \
             rm f && echo removed-file; rm -r keep || echo rm-dir-refused; echo end"
        );
        let (code, out) = run_under(&programs, &script);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("touched"), "{out}");
        assert!(
            out.contains("Permission denied"),
            "mkdir: EACCES from errnoRet: {out}"
        );
        assert!(
            out.contains("Operation not permitted"),
            "ln: EPERM by default: {out}"
        );
        // unlinkat without AT_REMOVEDIR (512) is not matched: rm works.
        assert!(out.contains("removed-file"), "{out}");
        // With AT_REMOVEDIR it is: the folder stays.
        assert!(out.contains("rm-dir-refused"), "{out}");
        assert!(dir.path().join("keep").is_dir());
        assert!(!dir.path().join("d").exists() && !dir.path().join("l").exists());
    }

    #[test]
    fn a_call_listed_with_and_without_conditions_is_unconditional() {
        let mut map = BTreeMap::new();
        let cond = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, 1).unwrap();
        add(
            &mut map,
            1,
            Some(SeccompRule::new(vec![cond.clone()]).unwrap()),
        );
        assert_eq!(map[&1].len(), 1);
        add(&mut map, 1, None);
        assert!(map[&1].is_empty());
        add(&mut map, 1, Some(SeccompRule::new(vec![cond]).unwrap()));
        assert!(map[&1].is_empty(), "stays unconditional");
    }
}
