//! The `husk` binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn husk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(args)
        .output()
        .expect("run husk")
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn every_example_validates() {
    let prepare = Command::new(examples_dir().join("prepare"))
        .status()
        .expect("run examples/prepare");
    assert!(prepare.success(), "examples/prepare failed");
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path().join("appliance.toml"))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "expected the hello and busybox examples");
    for file in &files {
        let out = husk(&["validate", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn invalid_file_exits_1_with_placed_errors_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[appliance]\nname = \"bad\"\n[run]\ncommand = [\"/x\"]\n[vm]\nmemory = \"12x\"\n",
    )
    .unwrap();
    let out = husk(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "{}:6:10: vm.memory: \"12x\" is not a size; write e.g. \"128MiB\"",
            file.display()
        )
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn version_and_help_list_only_working_commands() {
    let out = husk(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("husk 0."));
    let help = String::from_utf8_lossy(&husk(&["--help"]).stdout).to_string();
    for cmd in ["validate", "kernel"] {
        assert!(help.contains(cmd), "{cmd} missing from --help");
    }
    for later in ["build", "inspect"] {
        assert!(
            !help.lines().any(|l| l.trim_start().starts_with(later)),
            "{later} is in --help before it works"
        );
    }
}

#[test]
fn run_explains_pvm_or_exits_with_the_guest_status() {
    let kvm = Path::new("/dev/kvm");
    assert!(
        kvm.exists(),
        "no /dev/kvm on this machine: this test needs a usable KVM"
    );
    let dir = tempfile::tempdir().unwrap();
    let elf = boot_tests::guest::tiny_guest(dir.path(), false).unwrap();
    let out = husk(&[
        "run",
        "--memory",
        "32",
        "--timeout",
        "20",
        "--kernel",
        elf.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if Path::new("/sys/module/kvm_pvm").exists() {
        // PVM cannot emulate the guest's triple fault: the error must say
        // what PVM is and what to do, not just "internal error".
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("/dev/kvm is PVM"), "{stderr}");
        assert!(stderr.contains("hardware KVM"), "{stderr}");
    } else {
        // Hardware KVM: the guest reported status 0, then shut down.
        assert_eq!(out.status.code(), Some(0), "{stderr}");
    }
}
