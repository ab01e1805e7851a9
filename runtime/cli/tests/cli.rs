//! The `husk` binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn husk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(args)
        .output()
        .expect("run husk")
}

/// husk with its state, data, cache and snapshot folders in a temporary
/// folder of the test's own.
struct Home(tempfile::TempDir);

impl Home {
    fn new() -> Self {
        Home(tempfile::tempdir().unwrap())
    }

    fn state(&self) -> PathBuf {
        self.0.path().join("state")
    }

    fn command(&self, args: &[&str]) -> Command {
        let at = |folder: &str| self.0.path().join(folder);
        let mut c = Command::new(env!("CARGO_BIN_EXE_husk"));
        c.args(args)
            .env("HUSK_STATE_DIR", at("state"))
            .env("HUSK_DATA_DIR", at("data"))
            .env("HUSK_CACHE_DIR", at("cache"))
            .env("HUSK_SNAPSHOT_DIR", at("snapshots"))
            .stdin(std::process::Stdio::null());
        c
    }

    fn husk(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Its stdout; it must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.husk(args);
        assert!(
            out.status.success(),
            "husk {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// It must fail, saying `why`.
    fn fails(&self, args: &[&str], why: &str) {
        let out = self.husk(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(why),
            "husk {args:?} should fail with {why:?}: {stderr}"
        );
    }
}

impl Home {
    /// A detached appliance's `state.json`, as husk would have written it.
    fn put_state(&self, name: &str, state: serde_json::Value) {
        let dir = self.state().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
    }

    fn state_of(&self, name: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.state().join(name).join("state.json")).unwrap())
            .unwrap()
    }
}

/// This process's start time (`/proc/self/stat` field 22): with its pid,
/// a keeper that runs, for a state that says so.
fn alive_keeper() -> (u32, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    (std::process::id(), start)
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
    for cmd in ["run", "build", "inspect", "validate", "kernel"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing from --help"
        );
    }
}

/// `husk build` prints the image's path; `inspect` reads it back.
#[test]
fn build_then_inspect_an_example() {
    let prepare = Command::new(examples_dir().join("prepare"))
        .status()
        .unwrap();
    assert!(prepare.success());
    let cache = tempfile::tempdir().unwrap();
    let out_file = cache.path().join("copy.cpio.gz");
    let hello = examples_dir().join("hello");
    let build = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_husk"))
            .arg("build")
            .args(args)
            .env("HUSK_CACHE_DIR", cache.path())
            .output()
            .unwrap()
    };
    let out = build(&[hello.to_str().unwrap(), "-o", out_file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        out_file.to_str().unwrap()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("initramfs image") && stderr.contains("sha256:"),
        "{stderr}"
    );
    let out = husk(&["inspect", "--files", out_file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "command:  /bin/hello",
        "env:      GREETING=Hello",
        "hostname: hello",
        "rdinit=/.husk/init",
        "-rwxr-xr-x     0     0",
        "/bin/hello",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}

/// `husk image ls|rm|prune` over a cache of its own: an appliance changed
/// supersedes its old image, a deleted one orphans its image, a killed
/// build's folder is a leftover; prune takes those and nothing else.
#[test]
fn image_ls_prune_and_rm_take_only_what_they_should() {
    let prepare = Command::new(examples_dir().join("prepare"))
        .status()
        .unwrap();
    assert!(prepare.success());
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let husk_c = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_husk"))
            .args(args)
            .env("HUSK_CACHE_DIR", &cache)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    // Copies of the hello example, each with a greeting of its own.
    let appliance = |name: &str, greeting: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(examples_dir().join("hello/hello"), dir.join("hello")).unwrap();
        let text = std::fs::read_to_string(examples_dir().join("hello/appliance.toml")).unwrap();
        let text = text.replace(
            "GREETING = \"Hello\"",
            &format!("GREETING = \"{greeting}\""),
        );
        std::fs::write(dir.join("appliance.toml"), text).unwrap();
        dir
    };
    let build = |dir: &Path| {
        let (code, out, err) = husk_c(&["build", dir.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{err}");
        // .../images/KEY/rootfs.cpio.gz
        let path = PathBuf::from(out.trim());
        let key = path.parent().and_then(|p| p.file_name()).unwrap();
        key.to_string_lossy().into_owned()
    };
    let one = appliance("one", "First");
    let old = build(&one);
    appliance("one", "Changed");
    let new = build(&one);
    let two = appliance("two", "Second");
    let orphan = build(&two);
    std::fs::remove_dir_all(&two).unwrap();
    assert!(old != new && new != orphan && old != orphan);

    let (code, ls, err) = husk_c(&["image", "ls"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("3 images"), "{err}");
    let line = |key: &str| {
        ls.lines()
            .find(|l| l.starts_with(&key[..12]))
            .unwrap_or_else(|| panic!("{key} not in:\n{ls}"))
            .to_string()
    };
    let one_file = one.join("appliance.toml").canonicalize().unwrap();
    assert!(
        line(&new).ends_with(&one_file.display().to_string()),
        "{ls}"
    );
    assert!(line(&old).contains("superseded"), "{ls}");
    assert!(line(&orphan).contains("orphaned"), "{ls}");
    assert!(!line(&new).contains("superseded") && !line(&new).contains("orphaned"));
    // docker's --format: a template a line, json, a table.
    let (code, keys, err) = husk_c(&["image", "ls", "--format", "{{.Key}} {{.State}}"]);
    assert_eq!(code, Some(0), "{err}");
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort();
    let mut want = vec![
        format!("{new} "),
        format!("{old} superseded"),
        format!("{orphan} orphaned"),
    ];
    want.sort();
    assert_eq!(keys, want);
    let (_, json, _) = husk_c(&["image", "ls", "--format", "json"]);
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["ID"].as_str().unwrap().len(), 12, "{json}");
    let (_, table, _) = husk_c(&["image", "ls", "--format", "table {{.ID}}\\t{{.Format}}"]);
    assert!(table.starts_with("KEY "), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");

    // A killed build's folder (no process has pid 0 in /proc).
    let leftover = cache.join("images").join(".0123.tmp-0-0");
    std::fs::create_dir_all(leftover.join("staging")).unwrap();
    let (code, out, err) = husk_c(&["image", "prune"]);
    assert_eq!(code, Some(0), "{err}");
    let mut pruned: Vec<&str> = out.lines().collect();
    pruned.sort();
    let mut want = [old.as_str(), orphan.as_str()];
    want.sort();
    assert_eq!(pruned, want, "prune takes the superseded and the orphaned");
    assert!(!leftover.exists(), "prune takes a killed build's leftover");
    assert!(err.contains("freed"), "{err}");

    // rm by a beginning of the key; an unknown key is named.
    let (code, _, err) = husk_c(&["image", "rm", "nosuchkey"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("nosuchkey: no such image"), "{err}");
    let (code, out, err) = husk_c(&["image", "rm", &new[..8]]);
    assert_eq!((code, out.trim()), (Some(0), new.as_str()), "{err}");
    let (_, ls, err) = husk_c(&["image", "ls"]);
    assert_eq!(ls.lines().count(), 1, "only the header is left: {ls}");
    assert!(err.contains("0 images"), "{err}");

    // --all takes every image, in use or not.
    build(&one);
    let (code, out, _) = husk_c(&["image", "prune", "--all"]);
    assert_eq!((code, out.lines().count()), (Some(0), 1));
    let left: Vec<_> = std::fs::read_dir(cache.join("images")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A bad appliance file stops the build with the placed diagnostics; an
/// argument that is neither a file nor a reference says what is expected.
#[test]
fn build_reports_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("appliance.toml");
    std::fs::write(&file, "[appliance]\nname = \"x\"\n[run]\ncommand = 3\n").unwrap();
    let out = husk(&["build", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("appliance.toml:4:") && err.contains("run.command"),
        "{err}"
    );
    let out = husk(&["build", "/no/such/thing"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("neither an appliance file nor an image reference"),
        "{err}"
    );
    // A word that is no file or folder here and reads as a registry
    // reference is pulled, as docker and podman take it (nothing listens
    // on port 1: the pull fails at once, or husk-pull is not built here).
    let out = husk(&["build", "127.0.0.1:1/husk/none:v1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "cannot build 127.0.0.1:1/husk/none:v1 (no appliance file or folder here, so the \
             registry image 127.0.0.1:1/husk/none:v1)"
        ),
        "{err}"
    );
}

/// What `husk run` does depends on what serves `/dev/kvm` here: none
/// (this host kind has no KVM at all) and PVM are refused with what is
/// missing and what to do; hardware KVM runs the guest, which exits 0.
/// The boot tests check a Linux guest's status inside the KVM test bed.
#[test]
fn run_says_what_this_hosts_kvm_lacks_or_exits_with_the_guest_status() {
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
    let kind = boot_tests::KvmKind::detect();
    match kind {
        _ if !Path::new("/dev/kvm").exists() => {
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(stderr.contains("/dev/kvm does not exist"), "{stderr}");
            assert!(stderr.contains("load kvm_intel or kvm_amd"), "{stderr}");
        }
        boot_tests::KvmKind::Pvm => {
            // PVM cannot emulate the guest's triple fault: the error must
            // say what PVM is and what to do, not just "internal error".
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(stderr.contains("/dev/kvm is PVM"), "{stderr}");
            assert!(stderr.contains("hardware KVM"), "{stderr}");
        }
        _ => {
            // Hardware KVM: the guest reported status 0, then shut down.
            assert_eq!(out.status.code(), Some(0), "{kind:?}: {stderr}");
        }
    }
}

/// Without root the builder cannot chown; owners still come out as the
/// appliance says (the debugfs pass applies them), and the image is the
/// same bytes a root build makes.
#[test]
fn a_build_without_root_sets_owners_and_matches_a_root_build() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::write(d.join("prog"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(
        d.join("appliance.toml"),
        "[appliance]\nname = \"nr\"\n[rootfs]\nformat = \"ext4\"\n\
         [[rootfs.files]]\nsrc = \"prog\"\ndst = \"/bin/prog\"\nuid = 1000\ngid = 1000\nmode = \"4750\"\n\
         [[rootfs.dirs]]\npath = \"/data\"\nmode = \"0700\"\nuid = 7\ngid = 8\n\
         [run]\ncommand = [\"/bin/prog\"]\n",
    )
    .unwrap();
    let build = |cache: &str, unprivileged: bool| {
        let husk = env!("CARGO_BIN_EXE_husk");
        let mut cmd = if unprivileged && is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", husk]);
            c
        } else {
            Command::new(husk)
        };
        let out = cmd
            .args(["build", d.join("appliance.toml").to_str().unwrap()])
            .env("HUSK_CACHE_DIR", d.join(cache))
            .env("HUSK_STAGING_DIR", d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    };
    let image = build("user-cache", true);
    let out = husk(&["inspect", "--files", image.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("-rwsr-x---  1000  1000         18 /bin/prog"),
        "{text}"
    );
    assert!(
        text.contains("drwx------     7     8          0 /data"),
        "{text}"
    );
    assert!(text.contains("-rwxr-xr-x     0     0"), "{text}");
    if is_root() {
        let root_image = build("root-cache", false);
        assert_eq!(
            std::fs::read(&image).unwrap(),
            std::fs::read(&root_image).unwrap()
        );
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// The jail on this host's own cgroup layout (v1 here; the boot tests
/// cover v2 in the test bed), with a tiny guest that spins until
/// `--timeout`: another uid, no capabilities, an empty root, the cgroup
/// limit, and nothing left afterwards. Where this host has no KVM at all
/// the run is refused before any jail or cgroup is made, and none is left
/// (the boot tests hold a running jailed VMM inside the test bed).
#[test]
fn the_jail_holds_a_running_vmm_and_leaves_nothing() {
    assert!(is_root(), "this test needs root: the jail needs it");
    let dir = tempfile::tempdir().unwrap();
    let spin = boot_tests::guest::tiny_guest(dir.path(), true).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(["run", "--memory", "32", "--timeout", "8", "--kernel"])
        .arg(&spin)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let husk = child.id();
    if !Path::new("/dev/kvm").exists() {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("/dev/kvm does not exist"), "{stderr}");
        assert!(!Path::new(&format!("{}/{husk}", vmm::jail::JAIL_DIR)).exists());
        let cgroups = vmm::jail::Cgroups::detect().expect("a cgroup hierarchy with memory and cpu");
        for d in cgroups.dirs(husk) {
            assert!(!d.exists(), "{} left behind", d.display());
        }
        return;
    }
    let children = format!("/proc/{husk}/task/{husk}/children");
    let mut vmm = None;
    // Up to the guest's --timeout: the host checks run beside the test
    // beds in CI, where a VMM may take seconds to reach its filters.
    for _ in 0..800 {
        let c = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = c.split_whitespace().next() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            // Past the drop of privileges and the filters.
            if status.contains("Seccomp:\t2") {
                vmm = Some((pid.to_string(), status));
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (pid, status) = vmm.expect("a jailed VMM child under filters");
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .collect();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let cgroups = vmm::jail::Cgroups::detect().expect("a cgroup hierarchy with memory and cpu");
    let limit_file = match &cgroups {
        vmm::jail::Cgroups::V2(_) => "memory.max",
        vmm::jail::Cgroups::V1 { .. } => "memory.limit_in_bytes",
    };
    let limit = std::fs::read_to_string(cgroups.dirs(husk)[0].join(limit_file)).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        status.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            status.contains(&format!("{cap}:\t0000000000000000")),
            "{status}"
        );
    }
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(root.is_empty(), "host files are visible in the jail");
    assert!(cgroup.contains(&format!("husk-{husk}")), "{cgroup}");
    assert_eq!(limit.trim(), ((32u64 + 256) << 20).to_string());
    assert_eq!(
        out.status.code(),
        Some(124),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new(&format!("{}/{husk}", vmm::jail::JAIL_DIR)).exists());
    for d in cgroups.dirs(husk) {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

/// `husk ARGS` with its detached appliances kept in `state`.
fn husk_in(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(args)
        .env("HUSK_STATE_DIR", state)
        .output()
        .expect("run husk")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn detached_commands_name_what_is_wrong() {
    let state = tempfile::tempdir().unwrap();
    let s = state.path();
    let ps = husk_in(s, &["ps", "-a"]);
    assert!(ps.status.success(), "{}", stderr(&ps));
    assert_eq!(
        String::from_utf8_lossy(&ps.stdout).trim(),
        "NAME   IMAGE   STATUS   PORTS   ADDRESSES"
    );
    for args in [
        &["exec", "nope", "true"][..],
        &["logs", "nope"],
        &["stop", "nope"],
        &["kill", "nope"],
        &["kill", "-s", "TERM", "nope"],
        &["wait", "nope"],
        &["rm", "nope"],
    ] {
        let o = husk_in(s, args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&o).contains("no appliance named \"nope\" (see husk ps -a)"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let o = husk_in(s, &["kill", "-s", "SIGNOPE", "nope"]);
    assert!(
        stderr(&o).contains("\"SIGNOPE\" is not a signal"),
        "{}",
        stderr(&o)
    );
    let o = husk_in(s, &["kill", "nope", "TERM"]);
    assert!(
        stderr(&o).contains("TERM is a signal, not an appliance: write husk kill -s TERM NAME"),
        "{}",
        stderr(&o)
    );
    let o = husk_in(s, &["run", "-d"]);
    assert!(
        stderr(&o).contains("-d runs an appliance or an image"),
        "{}",
        stderr(&o)
    );
    let o = husk_in(s, &["run", "-d", "--name=a/b", "examples/hello"]);
    assert!(
        stderr(&o).contains("\"a/b\" is not a valid name"),
        "{}",
        stderr(&o)
    );
    // A name that makes the sockets' paths too long is refused up front.
    let deep = s.join("d".repeat(60));
    std::fs::create_dir(&deep).unwrap();
    let hello = examples_dir().join("hello");
    let long = "n".repeat(64);
    let o = husk_in(
        &deep,
        &["run", "-d", "--name", &long, hello.to_str().unwrap()],
    );
    assert!(
        stderr(&o).contains("choose a shorter --name"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_dir(&deep).unwrap().count(), 0);
    std::fs::remove_dir(&deep).unwrap();
    let o = husk_in(s, &["run", "--name", "x", "examples/hello"]);
    assert!(
        !o.status.success() && stderr(&o).contains("--detach"),
        "{}",
        stderr(&o)
    );
    // Nothing was made for any of them.
    assert_eq!(std::fs::read_dir(s).unwrap().count(), 0);
}

/// What a keeper that was killed leaves: ps shows it exited with no
/// status, exec and wait say so, and rm removes it.
#[test]
fn a_dead_keepers_appliance_shows_exited_and_rm_removes_it() {
    let state = tempfile::tempdir().unwrap();
    let s = state.path();
    let dir = s.join("ghost");
    std::fs::create_dir(&dir).unwrap();
    // A pid that is alive (this test) with a start time that is not its
    // own: the keeper's pid was recycled.
    let state_json = format!(
        r#"{{"name":"ghost","image":"examples/busybox","ports":[],"created_ms":1,"status":"running",
            "started_ms":2,"keeper_pid":{},"keeper_start":1}}"#,
        std::process::id()
    );
    std::fs::write(dir.join("state.json"), state_json).unwrap();
    std::fs::write(dir.join("console.log"), "line one\r\nline two\r\n").unwrap();
    let ps = husk_in(s, &["ps"]);
    assert!(!String::from_utf8_lossy(&ps.stdout).contains("ghost"));
    let ps = husk_in(s, &["ps", "-a"]);
    let out = String::from_utf8_lossy(&ps.stdout);
    assert!(
        out.contains("ghost") && out.contains("Exited (unknown: its keeper was killed)"),
        "{out}"
    );
    let logs = husk_in(s, &["logs", "-n", "1", "ghost"]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "line two\r\n");
    let o = husk_in(s, &["exec", "ghost", "true"]);
    assert!(
        stderr(&o).contains("ghost is not running"),
        "{}",
        stderr(&o)
    );
    let o = husk_in(s, &["wait", "ghost"]);
    assert!(
        stderr(&o).contains("its exit status is unknown"),
        "{}",
        stderr(&o)
    );
    let hello = examples_dir().join("hello");
    let o = husk_in(
        s,
        &["run", "-d", "--name", "ghost", hello.to_str().unwrap()],
    );
    assert!(
        stderr(&o).contains("taken by an appliance that has exited: husk rm ghost first"),
        "{}",
        stderr(&o)
    );
    let o = husk_in(s, &["rm", "ghost"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!dir.exists());
}

/// `husk system df` counts appliances, images and snapshots, and what of
/// them nothing uses; `husk system prune` removes just that.
#[test]
fn system_df_and_prune_take_what_nothing_uses() {
    let prepare = Command::new(examples_dir().join("prepare"))
        .status()
        .unwrap();
    assert!(prepare.success());
    let tmp = tempfile::tempdir().unwrap();
    let (state, cache, snaps) = (
        tmp.path().join("state"),
        tmp.path().join("cache"),
        tmp.path().join("snapshots"),
    );
    let husk_s = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_husk"))
            .args(args)
            .env("HUSK_STATE_DIR", &state)
            .env("HUSK_CACHE_DIR", &cache)
            .env("HUSK_SNAPSHOT_DIR", &snaps)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "husk {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Two appliances: one exited, one whose keeper (this test) runs.
    let own_start = std::fs::read_to_string("/proc/self/stat").unwrap();
    let own_start = own_start[own_start.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string();
    for (name, status, start) in [("gone", "exited", "1"), ("live", "running", &own_start)] {
        let dir = state.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let json = format!(
            r#"{{"name":"{name}","image":"x","ports":[],"created_ms":1,"status":"{status}",
                "keeper_pid":{},"keeper_start":{start}}}"#,
            std::process::id()
        );
        std::fs::write(dir.join("state.json"), json).unwrap();
        std::fs::write(dir.join("console.log"), vec![b'x'; 5000]).unwrap();
    }
    // Two images of one appliance: the first superseded by the second.
    let app = tmp.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::copy(examples_dir().join("hello/hello"), app.join("hello")).unwrap();
    let toml = std::fs::read_to_string(examples_dir().join("hello/appliance.toml")).unwrap();
    let mut keys = Vec::new();
    for greeting in ["One", "Two"] {
        let text = toml.replace(
            "GREETING = \"Hello\"",
            &format!("GREETING = \"{greeting}\""),
        );
        std::fs::write(app.join("appliance.toml"), text).unwrap();
        let path = husk_s(&["build", app.to_str().unwrap()]);
        let key = std::path::Path::new(path.trim())
            .parent()
            .unwrap()
            .file_name()
            .unwrap();
        keys.push(key.to_string_lossy().into_owned());
    }
    // A snapshot whose run ended before it was whole.
    std::fs::create_dir_all(snaps.join("0123456789abcdef0123456789abcdef")).unwrap();

    let row_of = |df: &str, kind: &str| -> Vec<String> {
        df.lines()
            .find(|l| l.starts_with(kind))
            .unwrap_or_else(|| panic!("no {kind} in:\n{df}"))
            .split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect()
    };
    let df = husk_s(&["system", "df"]);
    let row = |kind: &str| row_of(&df, kind);
    assert_eq!(row("Appliances")[1..3], ["2", "1"], "{df}");
    assert_eq!(row("Images")[1..3], ["2", "1"], "{df}");
    assert_eq!(row("Snapshots")[1..3], ["1", "0"], "{df}");
    assert_ne!(row("Images")[4], "0KiB", "{df}");
    assert!(
        row("Kernels").len() == 5 && row("Pulled images").len() == 5,
        "{df}"
    );

    let out = husk_s(&["system", "prune"]);
    let want = format!(
        "Deleted appliances:\ngone\nDeleted images:\n{}\nDeleted snapshots:\n0123456789abcdef0123456789abcdef\n",
        keys[0]
    );
    assert_eq!(out, want);
    assert!(state.join("live").exists() && !state.join("gone").exists());
    assert!(cache.join("images").join(&keys[1]).exists());
    assert!(!cache.join("images").join(&keys[0]).exists());
    let df = husk_s(&["system", "df"]);
    for kind in ["Appliances", "Images", "Snapshots"] {
        assert_eq!(row_of(&df, kind)[4], "0KiB", "{kind}: {df}");
    }
    // Nothing more to take.
    assert_eq!(husk_s(&["system", "prune"]), "");
}

#[test]
fn networks_are_made_listed_held_by_the_appliances_that_name_them_and_pruned() {
    let home = Home::new();
    let state = home.state();
    assert_eq!(home.ok(&["network", "create", "backend"]).trim(), "backend");
    home.ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        "10.77.1.9/24",
        "quiet",
    ]);
    home.ok(&["network", "create", "spare"]);
    home.fails(&["network", "create", "backend"], "exists already");
    home.fails(&["network", "create", "user"], "not a network name");
    home.fails(
        &["network", "create", "--subnet", "10.77.0.0/16", "wide"],
        "another husk network has 10.77.1.0/24",
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&home.ok(&["network", "inspect", "backend", "quiet", "spare"]))
            .unwrap();
    let subnets: Vec<&str> = (0..3)
        .map(|i| inspect[i]["Subnet"].as_str().unwrap())
        .collect();
    assert_eq!(subnets[1], "10.77.1.0/24");
    assert!(
        subnets[0].starts_with("10.89.") && subnets[2].starts_with("10.89."),
        "{subnets:?}"
    );
    assert_ne!(subnets[0], subnets[2], "each its own subnet");
    assert_eq!(inspect[1]["Internal"], true);
    assert_eq!(inspect[0]["InUse"], false);

    // An exited appliance that names backend holds it from rm and prune,
    // until it goes (system prune removes both).
    home.put_state(
        "db",
        serde_json::json!({"name": "db", "image": "x", "ports": [], "created_ms": 1,
            "status": "exited", "keeper_pid": 1, "keeper_start": 1, "networks": ["backend"]}),
    );
    std::fs::write(state.join("db/network-backend.address"), "10.89.9.7\n").unwrap();
    assert_eq!(
        home.ok(&[
            "network",
            "ls",
            "--format",
            "{{.Name}} {{.Internal}} {{.Appliances}}"
        ]),
        "backend false db\nquiet true \nspare false \n"
    );
    let ls = home.ok(&["network", "ls"]);
    assert!(
        ls.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["backend", subnets[0], "no", "no", "db"]),
        "{ls}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&home.ok(&["network", "inspect", "backend"])).unwrap();
    assert_eq!(inspect[0]["Appliances"], serde_json::json!(["db"]));
    assert_eq!(
        inspect[0]["Addresses"],
        serde_json::json!({"db": "10.89.9.7"}),
        "the address it last had"
    );
    home.fails(&["network", "rm", "backend"], "named by db");
    assert_eq!(home.ok(&["network", "prune", "-f"]), "quiet\nspare\n");
    let pruned = home.ok(&["system", "prune"]);
    assert!(pruned.contains("Deleted networks:\nbackend\n"), "{pruned}");
    assert_eq!(home.ok(&["network", "ls", "-q"]), "");
    home.fails(&["network", "rm", "backend"], "no such network: backend");
}

/// A network's hub as the first `husk run` on a network starts it (its
/// socket made, then handed over as fd 3, the first member connected
/// under the network's lock), driven by two members that
/// speak its protocol as the runs and their guests do: it runs confined
/// (a user namespace of its own, its folder as its root, seccomp), gives
/// each an address, tells each the other's name, switches a frame from
/// one to the other by MAC, and leaves with the last, taking its socket.
#[test]
fn a_network_hub_runs_confined_switches_frames_and_leaves_with_its_last_member() {
    use cli::networks::hub::{self, Hello, Reply};
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let made = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(["network", "create", "--subnet", "10.77.3.0/24", "lan"])
        .env("HUSK_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let dir = data.join("networks/lan").canonicalize().unwrap();
    let listener = UnixListener::bind(dir.join("hub.sock")).unwrap();
    let log = std::fs::File::create(dir.join("hub.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_husk"));
    command
        .args(["network", "hub", "lan"])
        .env("HUSK_DATA_DIR", &data)
        .stdout(std::process::Stdio::null())
        .stderr(log);
    hub::hand_listener(&mut command, &listener, None, false);
    // Killed should the test fail before it leaves.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // As a run joins: it connects under the network's lock, which the hub
    // takes before it leaves, so the hub cannot leave before its first
    // member is in its backlog.
    let lock = std::fs::File::open(dir.join("lock")).unwrap();
    lock.lock().unwrap();
    let mut hub_process = Reaped(command.spawn().unwrap());
    drop(listener);
    let first = UnixStream::connect(dir.join("hub.sock")).unwrap();
    lock.unlock().unwrap();

    // The answer to a hello, on the connection it was sent on.
    let read_frame = |s: &mut UnixStream| -> Vec<u8> {
        let mut len = [0u8; 4];
        if let Err(e) = s.read_exact(&mut len) {
            let log = std::fs::read_to_string(dir.join("hub.log")).unwrap_or_default();
            panic!("no frame from the hub ({e}); its log:\n{log}");
        }
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut frame).unwrap();
        frame
    };
    // As a run joins: its hello, with the hub's end of a new socket pair
    // attached; the VM's end, where frames come a message each, is the
    // member's from then on.
    let join = |mut s: UnixStream, name: &str, mac: [u8; 6]| -> (UnixStream, UnixStream, Reply) {
        use vmm_sys_util::sock_ctrl_msg::ScmSocket;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let hello = Hello {
            names: vec![name.into()],
            mac,
            want: None,
            fixed: false,
            held: Vec::new(),
        };
        let json = serde_json::to_vec(&hello).unwrap();
        let (vm, theirs) = vmm::vsock::seqpacket_pair().unwrap();
        let frame = hub::control_frame(hub::BROADCAST, mac, &json);
        let sent = s
            .send_with_fd(&frame[..], std::os::fd::AsRawFd::as_raw_fd(&theirs))
            .unwrap();
        assert_eq!(sent, frame.len());
        let reply = read_frame(&mut s);
        let reply = serde_json::from_slice(hub::payload(&reply).expect("a reply")).unwrap();
        let vm = UnixStream::from(vm);
        vm.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        (s, vm, reply)
    };
    let message = |vm: &UnixStream| -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 17];
        let n = match (&*vm).read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let log = std::fs::read_to_string(dir.join("hub.log")).unwrap_or_default();
                panic!("no frame from the hub ({e}); its log:\n{log}");
            }
        };
        assert!(n >= 4 && u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize == n - 4);
        buf[4..n].to_vec()
    };
    // The next frame that is not the hub's, skipping its lists of names.
    let next_data = |s: &UnixStream| loop {
        let frame = message(s);
        if hub::payload(&frame).is_none() {
            return frame;
        }
    };
    let (mac_a, mac_b) = ([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]);
    let (_a_control, a, reply_a) = join(first, "web", mac_a);
    let second = UnixStream::connect(dir.join("hub.sock")).unwrap();
    let (_b_control, b, reply_b) = join(second, "db", mac_b);
    let address = |r: Reply| match r {
        Reply::Welcome { address } => address.to_string(),
        Reply::Refused { reason } => panic!("refused: {reason}"),
    };
    assert_eq!(address(reply_a), "10.77.3.2");
    assert_eq!(address(reply_b), "10.77.3.3");
    // a's latest list of names has both.
    loop {
        let frame = message(&a);
        let hosts: serde_json::Value =
            serde_json::from_slice(hub::payload(&frame).unwrap()).unwrap();
        if hosts["hosts"].as_array().unwrap().len() == 2 {
            assert_eq!(hosts["hosts"][1]["names"][0], "db", "{hosts}");
            break;
        }
    }
    let mut frame = Vec::new();
    frame.extend_from_slice(&mac_b);
    frame.extend_from_slice(&mac_a);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(b"from web to db");
    let mut wire = (frame.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&frame);
    assert_eq!((&a).write(&wire).unwrap(), wire.len());
    assert_eq!(next_data(&b), frame);

    // Confined, as seen from the host.
    let pid = hub_process.0.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("\nSeccomp:\t2\n"), "{status}");
    assert!(status.contains("\nNoNewPrivs:\t1\n"), "{status}");
    let ns = |p: String| std::fs::read_link(p).unwrap();
    assert_ne!(
        ns(format!("/proc/{pid}/ns/user")),
        ns("/proc/self/ns/user".into()),
        "the hub has a user namespace of its own"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/root")).unwrap(),
        dir
    );

    // Both VMs end (their husks still hold their connections): the
    // members leave, and so does the hub, and its socket with it.
    drop((a, b));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = hub_process.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hub did not leave"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(dir.join("hub.log")).unwrap();
    assert!(exit.success(), "{exit}: {log}");
    assert!(!dir.join("hub.sock").exists(), "{log}");
    assert!(
        log.contains("10.77.3.2 joined (web)") && log.contains("10.77.3.3 left (db)"),
        "{log}"
    );
    assert!(!log.contains("refused"), "{log}");
}

/// `husk network connect` and `disconnect` change what a stopped
/// detached appliance joins at its next start (its recorded command line
/// and the networks it names), leave a running one to its keeper, and refuse a network that
/// does not exist, and one it is not on.
#[test]
fn stopped_appliances_are_connected_to_networks_and_disconnected() {
    let home = Home::new();
    home.ok(&["network", "create", "--subnet", "10.77.5.0/24", "backend"]);
    home.ok(&["network", "create", "front"]);
    let write = |name: &str, status: &str, pid: u32, start: u64| {
        home.put_state(
            name,
            serde_json::json!({
                "name": name, "image": "examples/busybox", "ports": [], "created_ms": 1,
                "status": status, "keeper_pid": pid, "keeper_start": start,
                "networks": ["backend"], "cwd": "/",
                "args": ["run", "-d", "--name", name, "--net", "backend", "--ip", "10.77.5.9",
                         "examples/busybox",
                         "--", "echo", "--net", "backend"],
            }),
        );
    };
    let recorded = |name: &str| -> (Vec<String>, Vec<String>) {
        let s = home.state_of(name);
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap().to_string())
                .collect()
        };
        (strings(&s["args"]), strings(&s["networks"]))
    };
    write("db", "exited", 1, 1);

    home.ok(&["network", "connect", "--alias", "data", "front", "db"]);
    let (args, networks) = recorded("db");
    assert_eq!(networks, ["backend", "front"]);
    assert_eq!(
        args.join(" "),
        "run -d --name db --net backend --net front --network-alias data --ip 10.77.5.9 \
         examples/busybox -- echo --net backend"
    );
    let ls = String::from_utf8(home.husk(&["network", "ls"]).stdout).unwrap();
    assert!(
        ls.lines()
            .any(|l| l.starts_with("front ") && l.ends_with(" db")),
        "front is named by db now: {ls}"
    );
    home.fails(
        &["network", "connect", "front", "db"],
        "db is on front already",
    );
    // --ip names an address in a network's subnet (checked before boot).
    let hello = examples_dir().join("hello");
    let hello = hello.to_str().unwrap();
    home.fails(
        &["run", "--net", "front", "--ip", "192.0.2.9", hello],
        "--ip 192.0.2.9: none of this run's networks (front) has it in its subnet",
    );
    home.fails(
        &["run", "--ip", "192.0.2.9", hello],
        "this run joins none: add --net NAME",
    );
    home.fails(
        &["network", "connect", "nowhere", "db"],
        "no such network: nowhere",
    );

    home.ok(&["network", "disconnect", "backend", "db"]);
    let (args, networks) = recorded("db");
    assert_eq!(networks, ["front"]);
    assert_eq!(
        args.join(" "),
        "run -d --name db --net front --network-alias data examples/busybox \
         -- echo --net backend",
        "its --ip on backend goes with it, the command's words stay"
    );
    home.fails(
        &["network", "disconnect", "backend", "db"],
        "db is not on backend",
    );
    home.fails(&["network", "disconnect", "front", "nobody"], "nobody");
    // --ip: an address in the network's subnet, on a run without one.
    home.fails(
        &["network", "connect", "--ip", "192.0.2.9", "backend", "db"],
        "--ip 192.0.2.9 is not in backend's subnet 10.77.5.0/24",
    );
    home.ok(&["network", "connect", "--ip", "10.77.5.30", "backend", "db"]);
    let (args, networks) = recorded("db");
    assert_eq!(networks, ["front", "backend"]);
    assert_eq!(
        args.join(" "),
        "run --ip 10.77.5.30 -d --name db --net front --net backend --network-alias data \
         examples/busybox -- echo --net backend"
    );
    home.ok(&["network", "disconnect", "front", "db"]);
    let inspected = home.husk(&["network", "inspect", "front"]).stdout;
    let inspected: serde_json::Value = serde_json::from_slice(&inspected).unwrap();
    let subnet = inspected[0]["Subnet"].as_str().unwrap().to_string();
    let in_front = format!("{}.31", &subnet[..subnet.rfind('.').unwrap()]);
    home.fails(
        &["network", "connect", "--ip", &in_front, "front", "db"],
        "it has --ip 10.77.5.30 already, and a run takes one --ip",
    );

    // A running one is changed by its keeper, through its control socket
    // (the keeper here is this test, alive, with none): refused,
    // unchanged. (The bed's networks test connects a running one.)
    let (pid, start) = alive_keeper();
    write("web", "running", pid, start);
    home.fails(
        &["network", "connect", "front", "web"],
        "web is not running",
    );
    home.fails(
        &["network", "disconnect", "backend", "web"],
        "web is not running",
    );
    assert_eq!(recorded("web").1, ["backend"]);
}

/// `--pull never` refuses a registry image not pulled yet, `husk pull`
/// takes registry images only, and `husk inspect` pulls none (what a pull
/// again does is the builder's registry test's: `a_tag_pulled_again_...`).
#[test]
fn registry_images_are_pulled_as_the_policy_says() {
    let home = Home::new();
    home.fails(
        &["run", "--pull", "never", "127.0.0.1:1/husk/none:v1"],
        "127.0.0.1:1/husk/none:v1 has not been pulled, and --pull never",
    );
    home.fails(
        &["build", "--pull", "never", "docker://127.0.0.1:1/husk/none"],
        "127.0.0.1:1/husk/none:latest has not been pulled, and --pull never",
    );
    let hello = examples_dir().join("hello");
    home.fails(
        &["pull", hello.to_str().unwrap()],
        "is no registry image (husk build builds it)",
    );
    // Nothing listens on port 1: the pull fails, saying so.
    home.fails(
        &["pull", "127.0.0.1:1/husk/none:v1"],
        "cannot pull 127.0.0.1:1/husk/none:v1",
    );
    home.fails(
        &["run", "--pull", "sometimes", "x"],
        "invalid value 'sometimes'",
    );
    // inspect never pulls, as docker's: a bare word is an appliance's
    // name or an image pulled already.
    home.fails(
        &["inspect", "nosuchthing"],
        "no appliance named \"nosuchthing\", no file nosuchthing, and no pulled image",
    );
}

/// `husk update` writes a detached appliance's new restart policy, vCPUs
/// and memory into its state and recorded command line (what `husk
/// start` runs); a running one takes only a restart policy, and what a
/// run would refuse is refused.
#[test]
fn detached_appliances_are_updated_as_their_next_start_will_run() {
    let home = Home::new();
    let write = |name: &str, args: &[&str]| {
        home.put_state(
            name,
            serde_json::json!({
                "name": name, "image": "examples/busybox", "ports": [], "created_ms": 1,
                "status": "exited", "keeper_pid": 1, "keeper_start": 1, "cwd": "/",
                "args": args,
            }),
        );
    };
    let recorded = |name: &str| home.state_of(name);
    write(
        "db",
        &[
            "run",
            "-d",
            "--name",
            "db",
            "-m",
            "256",
            "examples/busybox",
            "--",
            "top",
            "-m",
            "1",
        ],
    );
    assert_eq!(
        home.ok(&[
            "update",
            "--restart",
            "on-failure:3",
            "--cpus",
            "2",
            "--memory",
            "1g",
            "db"
        ]),
        "db\n"
    );
    let state = recorded("db");
    assert_eq!(state["restart"], "on-failure:3");
    assert_eq!(
        state["args"],
        serde_json::json!([
            "run",
            "--memory",
            "1g",
            "--cpus",
            "2",
            "--restart",
            "on-failure:3",
            "-d",
            "--name",
            "db",
            "examples/busybox",
            "--",
            "top",
            "-m",
            "1"
        ])
    );
    home.ok(&["update", "--restart", "no", "db"]);
    assert_eq!(
        recorded("db")["restart"],
        serde_json::Value::Null,
        "no policy"
    );
    home.fails(&["update", "db"], "say what to change");
    home.fails(&["update", "-m", "16m", "db"], "at least 32MiB");
    home.fails(
        &["update", "--restart", "sometimes", "db"],
        "write no, always",
    );
    home.fails(&["update", "--cpus", "2", "nobody"], "nobody");

    write(
        "once",
        &["run", "-d", "--rm", "--name", "once", "examples/busybox"],
    );
    home.fails(
        &["update", "--restart", "always", "once"],
        "once cannot run so: --restart always: ",
    );
}

/// `husk rename` moves a stopped detached appliance's folder and changes
/// its state and recorded command line; a name in use, a bad name and a
/// running appliance are refused, and nothing changes then.
#[test]
fn stopped_appliances_are_renamed() {
    let home = Home::new();
    let write = |name: &str, status: &str, pid: u32, start: u64| {
        home.put_state(
            name,
            serde_json::json!({
                "name": name, "image": "examples/busybox", "ports": [], "created_ms": 1,
                "status": status, "keeper_pid": pid, "keeper_start": start, "cwd": "/",
                "args": ["run", "-d", "--name", name, "examples/busybox"],
            }),
        );
        std::fs::write(home.state().join(name).join("console.log"), "its log\n").unwrap();
    };
    let state_of = |name: &str| home.state_of(name);
    write("db", "exited", 1, 1);
    write("web", "exited", 1, 1);
    home.ok(&["rename", "db", "store"]);
    assert!(!home.state().join("db").exists());
    let state = state_of("store");
    assert_eq!(state["name"], "store");
    assert_eq!(
        state["args"],
        serde_json::json!(["run", "--name", "store", "-d", "examples/busybox"])
    );
    assert_eq!(
        std::fs::read_to_string(home.state().join("store/console.log")).unwrap(),
        "its log\n"
    );
    home.fails(&["rename", "store", "web"], "the name \"web\" is in use");
    assert_eq!(state_of("store")["name"], "store", "unchanged");
    assert_eq!(state_of("web")["name"], "web");
    home.fails(&["rename", "store", "no/slash"], "no/slash");
    home.fails(&["rename", "nobody", "x"], "no appliance named \"nobody\"");

    // A running one (its keeper is this test, alive).
    let (pid, start) = alive_keeper();
    write("live", "running", pid, start);
    home.fails(&["rename", "live", "x"], "live is running");
    assert!(home.state().join("live").exists());
}

/// `update`, `rename` and `rm` wait while another holds an appliance's
/// state lock (its keeper writing `state.json`, or another command
/// changing it), then act on the state as it is by then; none of them
/// writes under the lock's holder.
#[test]
fn state_changes_wait_for_the_state_lock() {
    use std::os::fd::AsRawFd;
    let home = Home::new();
    let put = |name: &str| {
        home.put_state(
            name,
            serde_json::json!({
                "name": name, "image": "examples/busybox", "ports": [], "created_ms": 1,
                "status": "exited", "keeper_pid": 1, "keeper_start": 1, "cwd": "/",
                "args": ["run", "-d", "--name", name, "examples/busybox"],
            }),
        );
    };
    let lock = |name: &str| {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(home.state().join(name).join("state.lock"))
            .unwrap();
        // SAFETY: flock on a descriptor the test owns.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
        f
    };
    // Runs `args` while `name`'s lock is held: it must still be waiting
    // after 300 ms, and end once the lock is let go.
    let waits = |name: &str, args: &[&str], meanwhile: &dyn Fn()| {
        let held = lock(name);
        let mut child = home
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "husk {args:?} did not wait for the state lock"
        );
        meanwhile();
        drop(held);
        child.wait_with_output().unwrap()
    };

    put("db");
    let out = waits("db", &["update", "--restart", "always", "db"], &|| {
        assert_eq!(home.state_of("db")["restart"], serde_json::Value::Null);
    });
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(home.state_of("db")["restart"], "always");

    let out = waits("db", &["rename", "db", "store"], &|| {
        assert!(home.state().join("db").exists());
    });
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!home.state().join("db").exists());
    assert_eq!(home.state_of("store")["name"], "store");

    // Started by another meanwhile (its keeper, alive, is this test):
    // rm waited, then found it running and left it.
    let (pid, start) = alive_keeper();
    let out = waits("store", &["rm", "store"], &|| {
        let mut state = home.state_of("store");
        state["status"] = "running".into();
        state["keeper_pid"] = pid.into();
        state["keeper_start"] = start.into();
        home.put_state("store", state);
    });
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("store was started again meanwhile"),
        "{}",
        stderr(&out)
    );
    assert!(home.state().join("store").exists());

    put("old");
    let out = waits("old", &["rm", "old"], &|| {});
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!home.state().join("old").exists());
}

/// `husk login` asks for nothing it cannot ask a terminal for, and hands
/// the credentials to husk-pull (which checks and saves them; tested
/// against a registry in builder's registry tests) on its stdin, never
/// on a command line; `husk logout` likewise.
#[test]
fn login_hands_the_credentials_to_husk_pull_on_its_stdin() {
    let home = Home::new();
    let bin = home.0.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let seen = home.0.path().join("seen");
    let fake = bin.join("husk-pull");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" > {0}\ncat >> {0}\n", seen.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let login = |args: &[&str], stdin: &str| {
        let mut child = home
            .command(args)
            .env("HUSK_PULL", &fake)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // husk may refuse its arguments and exit before it reads stdin.
        match std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("husk's stdin: {e}"),
            _ => {}
        }
        child.wait_with_output().unwrap()
    };
    let out = login(
        &[
            "login",
            "-u",
            "husk",
            "--password-stdin",
            "https://127.0.0.1:5000/v1/",
        ],
        "s3cret\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Login Succeeded\n");
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "login 127.0.0.1:5000\nhusk\ns3cret\n"
    );
    let out = login(&["logout", "--authfile", "/x/auth.json", "quay.io"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "logout quay.io /x/auth.json\n"
    );

    // Without a terminal it asks for nothing.
    let out = login(&["login", "--password-stdin", "quay.io"], "pw\n");
    assert!(
        stderr(&out).contains("give the user name with -u USER"),
        "{}",
        stderr(&out)
    );
    let out = login(&["login", "-u", "husk", "quay.io"], "");
    assert!(
        stderr(&out).contains("--password-stdin"),
        "{}",
        stderr(&out)
    );
    let out = login(&["login", "-u", "a:b", "--password-stdin", "quay.io"], "pw");
    assert!(stderr(&out).contains("no ':'"), "{}", stderr(&out));
    let out = login(
        &[
            "login",
            "-u",
            "husk",
            "-p",
            "x",
            "--password-stdin",
            "quay.io",
        ],
        "",
    );
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(&fake).unwrap();
    let out = login(
        &["login", "-u", "husk", "--password-stdin", "quay.io"],
        "pw\n",
    );
    assert!(
        stderr(&out).contains("cannot run husk-pull"),
        "{}",
        stderr(&out)
    );
}

/// `husk ps --filter` and `--format`, as docker's: values of one key are
/// alternatives, keys all apply, a status filter for exited ones implies
/// -a; a template's fields, `table` with its header, `json`; what is
/// not a filter or a field is refused, naming what is.
#[test]
fn ps_filters_and_formats_as_docker_does() {
    let home = Home::new();
    let (pid, start) = alive_keeper();
    let put = |name: &str, status: &str, image: &str, networks: &[&str], paused: bool| {
        let tier = networks.first().copied().unwrap_or_default();
        let labels = match tier {
            "" => serde_json::json!({}),
            tier => serde_json::json!({ "team": "a", "tier": tier }),
        };
        home.put_state(
            name,
            serde_json::json!({
                "name": name, "image": image, "ports": ["8080:80"], "created_ms": 1,
                "status": status, "started_ms": 2, "finished_ms": 3, "exit_code": 0,
                "keeper_pid": pid, "keeper_start": start, "networks": networks,
                "paused": paused, "labels": labels,
            }),
        );
    };
    put("web", "running", "examples/web", &["front"], false);
    put(
        "db",
        "running",
        "docker.io/library/postgres",
        &["back"],
        true,
    );
    put("old", "exited", "examples/web", &[], false);
    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["ps", "--format", "{{.Names}}"];
        all.extend_from_slice(args);
        home.ok(&all).lines().map(String::from).collect()
    };
    assert_eq!(names(&[]), ["db", "web"]);
    assert_eq!(names(&["-a"]), ["db", "old", "web"]);
    assert_eq!(names(&["--filter", "name=we"]), ["web"]);
    assert_eq!(names(&["--filter", "ancestor=examples/web"]), ["web"]);
    assert_eq!(names(&["--filter", "status=exited"]), ["old"]);
    assert_eq!(names(&["--filter", "status=paused"]), ["db"]);
    assert_eq!(
        names(&["-f", "status=running", "-f", "status=paused"]),
        ["db", "web"]
    );
    assert_eq!(
        names(&["-f", "network=back", "-f", "name=web"]),
        Vec::<String>::new()
    );
    assert_eq!(
        names(&["-f", "health=none", "-f", "network=front"]),
        ["web"]
    );
    assert_eq!(home.ok(&["ps", "-q", "-f", "name=d"]), "db\n");
    // Labels: by key, by key and value, and every label given must match.
    assert_eq!(names(&["-a", "-f", "label=team"]), ["db", "web"]);
    assert_eq!(names(&["-f", "label=tier=front"]), ["web"]);
    assert_eq!(
        names(&["-f", "label=team", "-f", "label=tier=back"]),
        ["db"]
    );
    assert_eq!(
        names(&["-f", "label=tier=front", "-f", "label=tier=back"]),
        Vec::<String>::new()
    );
    assert_eq!(
        home.ok(&["ps", "-f", "name=web", "--format", "{{.Labels}}"]),
        "team=a,tier=front\n"
    );

    assert_eq!(
        home.ok(&[
            "ps",
            "--format",
            "{{.Names}}: {{.State}} on {{.Networks}} ({{.Ports}})"
        ]),
        "db: paused on back (8080:80)\nweb: running on front (8080:80)\n"
    );
    let table = home.ok(&["ps", "-a", "--format", "table {{.Names}}\\t{{.State}}"]);
    assert_eq!(
        table.lines().map(str::trim_end).collect::<Vec<_>>(),
        [
            "NAMES   STATE",
            "db      paused",
            "old     exited",
            "web     running"
        ]
    );
    let json = home.ok(&["ps", "--format", "json", "-f", "name=web"]);
    let row: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(row["Names"], "web");
    assert_eq!(row["Image"], "examples/web");
    assert_eq!(row["State"], "running");

    // Go's template language, as docker's: functions and control.
    assert_eq!(
        home.ok(&[
            "ps",
            "-a",
            "--format",
            "{{.Names | upper}}{{if eq .State \"exited\"}} (gone){{end}}"
        ]),
        "DB\nOLD (gone)\nWEB\n"
    );
    home.fails(
        &["ps", "--format", "{{.ID}}"],
        ".ID: no such field; . has Addresses, Image, Labels, Names",
    );
    home.fails(&["ps", "--format", "{{.Names"], "{{ without }}");
    home.fails(&["ps", "-f", "since=a"], "filter by name, status");
    home.fails(
        &["ps", "-f", "label==a"],
        "write label=KEY or label=KEY=VALUE",
    );
    home.fails(
        &["ps", "-f", "status=sleeping"],
        "no appliance is ever \"sleeping\"",
    );
    home.fails(&["ps", "-f", "name"], "write KEY=VALUE");
}

/// `husk inspect NAME...` shows appliances as docker inspect shows
/// containers (one JSON list), and `--format` takes docker's templates.
#[test]
fn inspect_shows_appliances_as_docker_does() {
    let home = Home::new();
    let (pid, start) = alive_keeper();
    home.put_state(
        "web",
        serde_json::json!({
            "name": "web", "image": "examples/web", "created_ms": 1_700_000_000_000u64,
            "ports": ["127.0.0.1:8080->80/tcp", "9090->90/udp"],
            "status": "running", "started_ms": 1_700_000_001_000u64,
            "keeper_pid": pid, "keeper_start": start, "networks": ["front"],
            "restart": "on-failure:3", "restart_count": 2,
            "labels": {"tier": "front"},
            "health": {"status": "healthy", "failing_streak": 0, "log": [
                {"start_ms": 1_700_000_002_000u64, "end_ms": 1_700_000_002_500u64,
                 "exit_code": 0, "output": "ok"}
            ]},
        }),
    );
    std::fs::write(
        home.state().join("web/network-front.address"),
        "10.89.0.2\n",
    )
    .unwrap();
    home.put_state(
        "old",
        serde_json::json!({
            "name": "old", "image": "examples/hello", "created_ms": 1, "ports": [],
            "status": "exited", "started_ms": 2, "finished_ms": 3, "exit_code": 3,
            "keeper_pid": 0, "keeper_start": 0, "volumes": ["data"],
        }),
    );
    let listed: serde_json::Value =
        serde_json::from_str(&home.ok(&["inspect", "web", "old"])).unwrap();
    let web = &listed[0];
    assert_eq!(web["Name"], "web");
    assert_eq!(web["Created"], "2023-11-14T22:13:20Z");
    assert_eq!(web["State"]["Status"], "running");
    assert_eq!(web["State"]["Running"], true);
    assert_eq!(web["State"]["Pid"], pid);
    assert_eq!(web["State"]["Health"]["Status"], "healthy");
    assert_eq!(web["State"]["Health"]["Log"][0]["Output"], "ok");
    assert_eq!(web["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
    assert_eq!(web["HostConfig"]["RestartPolicy"]["MaximumRetryCount"], 3);
    assert_eq!(
        web["NetworkSettings"]["Ports"]["80/tcp"],
        serde_json::json!([{"HostIp": "127.0.0.1", "HostPort": "8080"}])
    );
    assert_eq!(
        web["NetworkSettings"]["Ports"]["90/udp"][0]["HostIp"],
        "0.0.0.0"
    );
    assert_eq!(web["Husk"]["keeper_pid"], pid);
    let old = &listed[1];
    assert_eq!(old["State"]["Status"], "exited");
    assert_eq!(old["State"]["ExitCode"], 3);
    assert_eq!(old["State"]["Running"], false);
    assert_eq!(old["State"]["StartedAt"], "1970-01-01T00:00:00.002Z");
    assert_eq!(old["Mounts"][0]["Name"], "data");
    assert_eq!(old["HostConfig"]["RestartPolicy"]["Name"], "no");

    let format = |template: &str| home.ok(&["inspect", "-f", template, "web", "old"]);
    assert_eq!(
        format("{{.Name}} {{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}"),
        "web running 0 2\nold exited 3 0\n"
    );
    assert_eq!(
        format("{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}}{{else}}none{{end}}"),
        "front=10.89.0.2\nnone\n"
    );
    assert_eq!(
        format("{{index .Config.Labels \"tier\"}}|{{json .Config.Labels}}|{{with .State.Health}}{{.Status}}{{end}}"),
        "front|{\"tier\":\"front\"}|healthy\n|{}|\n"
    );
    assert_eq!(
        format(
            "{{range $p, $b := .NetworkSettings.Ports}}{{$p}}>{{(index $b 0).HostPort}} {{end}}"
        ),
        "80/tcp>8080 90/udp>9090 \n\n"
    );

    // stats --format: the running one; its guest does not answer here.
    assert_eq!(
        home.ok(&[
            "stats",
            "--no-stream",
            "--format",
            "{{.Name}} {{.MemUsage}}"
        ]),
        "web --\n"
    );
    assert_eq!(
        home.ok(&[
            "stats",
            "--no-stream",
            "--format",
            "table {{.Container}}\\t{{.PIDs}}"
        ])
        .split_whitespace()
        .collect::<Vec<_>>(),
        ["CONTAINER", "PIDS", "web", "--"]
    );
    // One not there: the others are shown, and it fails naming it.
    let out = home.husk(&["inspect", "-f", "{{.Name}}", "web", "nosuch"]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));
    home.fails(
        &["inspect", "-f", "{{.State.Nope}}", "web"],
        ".State.Nope: no such field",
    );
    home.fails(
        &["inspect", "-f", "{{.State.Health.Status}}", "old"],
        ".State.Health is nil",
    );
    home.fails(
        &["inspect", "-f", "{{if .Name}}", "web"],
        "--format: {{if}} without its {{end}}",
    );
}

/// Anonymous volumes (`-v /PATH`, the image's VOLUMEs), with no kernel in
/// the test's cache so that every run stops after its volumes are made
/// and before a VM boots, on any host: a foreground run's go when it ends;
/// a detached appliance's are on its recorded command line, the same ones
/// at each start, and stay after `husk rm` (as docker's) but not after
/// `husk rm -v`, which leaves named volumes alone.
#[test]
fn anonymous_volumes_go_with_their_run_or_stay_with_their_appliance() {
    let home = Home::new();
    let busybox = examples_dir().join("busybox");
    let busybox = busybox.to_str().unwrap();
    let root = home.0.path().join("data/volumes");
    // The volumes there, and whatever of one is being made or removed.
    let entries = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&root)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let settled = |wanted: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while entries().len() != wanted && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        entries()
    };
    let recorded = |name: &str| -> Vec<String> {
        let args = home.state_of(name)["args"].clone();
        let args: Vec<String> = serde_json::from_value(args).unwrap();
        args.windows(2)
            .filter(|w| w[0] == "--anonymous-volume")
            .map(|w| w[1].clone())
            .collect()
    };

    // A foreground run's: made (the folder of volumes is there), then
    // removed by its reaper once it has ended.
    let o = home.husk(&["run", "-v", "/scratch", busybox, "--", "true"]);
    assert!(!o.status.success());
    assert!(root.is_dir(), "no volume was made: {}", stderr(&o));
    assert_eq!(settled(0), Vec::<String>::new(), "the run's volume stayed");

    // A detached appliance's: named on its command line, used by it.
    home.husk(&["run", "-d", "--name", "keep", "-v", "/scratch", busybox]);
    let anonymous = recorded("keep");
    assert_eq!(anonymous.len(), 1, "{anonymous:?}");
    let (name, path) = anonymous[0].split_once(':').unwrap();
    assert_eq!((name.len(), path), (64, "/scratch"));
    assert_eq!(entries(), [name]);
    assert_eq!(home.state_of("keep")["volumes"], serde_json::json!([name]));
    let ls = home.ok(&["volume", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with(name) && l.ends_with("keep")),
        "{ls}"
    );
    assert_eq!(
        home.ok(&[
            "volume",
            "ls",
            "--format",
            "{{.Name}} {{.Driver}} {{.UsedBy}}"
        ]),
        format!("{name} local keep\n")
    );
    // Started again: the same volume, and no other.
    home.husk(&["start", "keep"]);
    home.husk(&["wait", "keep"]);
    assert_eq!(recorded("keep"), anonymous);
    assert_eq!(entries(), [name]);
    // Removed without -v: the volume stays, used by nobody.
    home.ok(&["rm", "keep"]);
    assert_eq!(entries(), [name]);
    let ls = home.ok(&["volume", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with(name) && !l.ends_with("keep")),
        "{ls}"
    );

    // The image's VOLUMEs (the boot tests' busybox with /home and
    // /var/lib/app), less one a named volume takes, and with -v /scratch
    // besides: rm -v removes the anonymous ones and leaves the named one
    // and the first appliance's.
    let layout = home.0.path().join("layout");
    boot_tests::husk::make_volumes_layout(&layout).unwrap();
    let tag = format!("{}:latest", layout.display());
    let image = format!("oci:{tag}");
    home.husk(&[
        "run",
        "-d",
        "--name",
        "db",
        "-v",
        "/scratch",
        "-v",
        "kept:/home",
        &image,
    ]);
    let mut paths: Vec<String> = recorded("db")
        .iter()
        .map(|a| a.split_once(':').unwrap().1.to_string())
        .collect();
    paths.sort();
    assert_eq!(paths, ["/scratch", "/var/lib/app"]);
    assert_eq!(entries().len(), 4, "{:?}", entries());
    let o = home.husk(&["rm", "-v", "db"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut left = vec![name.to_string(), "kept".to_string()];
    left.sort();
    assert_eq!(entries(), left);
}

/// `husk run -d --label` and `--label-file`: recorded in the appliance's
/// state over the image's LABELs (a later value of a key wins: the
/// image's, then files, then flags), and a bad line refused with its file
/// and line before anything is made.
#[test]
fn labels_are_recorded_from_flags_and_files() {
    let home = Home::new();
    let layout = home.0.path().join("layout");
    boot_tests::husk::make_volumes_layout(&layout).unwrap();
    let tag = format!("{}:latest", layout.display());
    let labelled = Command::new("umoci")
        .args(["config", "--image", &tag])
        .args([
            "--config.label",
            "tier=image",
            "--config.label",
            "from=image",
        ])
        .status()
        .expect("umoci (ci/setup installs it)");
    assert!(labelled.success());
    let image = format!("oci:{tag}");
    let busybox = image.as_str();
    let inspected = home.ok(&["inspect", busybox]);
    assert!(inspected.contains("label:    from=image"), "{inspected}");
    assert_eq!(
        home.ok(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"from\"}} {{.Format}}",
            busybox
        ]),
        "image ext4\n"
    );
    // A published range, as docker's: each port, paired in order (the
    // keeper records them before its VM fails for want of a kernel).
    home.husk(&[
        "run",
        "-d",
        "--name",
        "ranged",
        "-p",
        "127.0.0.1:18000-18001:80-81/udp",
        busybox,
    ]);
    assert_eq!(
        home.ok(&["port", "ranged"]),
        "80/udp -> 127.0.0.1:18000\n81/udp -> 127.0.0.1:18001\n"
    );
    home.ok(&["rm", "ranged"]);
    home.fails(
        &["run", "-p", "8000-8001:80", busybox],
        "2 host ports for 1 guest port",
    );
    let file = home.0.path().join("labels");
    std::fs::write(&file, "# ours\n\nteam=a\ntier=back\n").unwrap();
    let file = file.to_str().unwrap();
    // The keeper records them before its VM fails for want of a kernel.
    home.husk(&[
        "run",
        "-d",
        "--name",
        "lab",
        "--label-file",
        file,
        "-l",
        "tier=front",
        "--label",
        "flag",
        busybox,
    ]);
    assert_eq!(
        home.state_of("lab")["labels"],
        serde_json::json!({ "from": "image", "team": "a", "tier": "front", "flag": "" })
    );
    // Read once: the recorded command line carries the file's labels, so
    // a later start does not need the file.
    let recorded = home.state_of("lab")["args"].to_string();
    assert!(
        !recorded.contains("--label-file") && recorded.contains("\"team=a\""),
        "{recorded}"
    );
    let bad = home.0.path().join("bad");
    std::fs::write(&bad, "ok=1\n=nokey\n").unwrap();
    home.fails(
        &[
            "run",
            "-d",
            "--name",
            "bad",
            "--label-file",
            bad.to_str().unwrap(),
            busybox,
        ],
        &format!("{}:2: \"=nokey\" is not KEY=VALUE", bad.display()),
    );
    home.fails(
        &["run", "-d", "--name", "bad", "-l", "a b=c", busybox],
        "--label: \"a b=c\" is not KEY=VALUE",
    );
    assert!(
        !home.state().join("bad").exists(),
        "a refused run made its folder"
    );
}

/// `husk create`: an appliance made as `husk run -d` would make it, not
/// started (ps -a and status=created list it as Created; wait, and a
/// start at boot, leave it be), which `husk start` runs (here it stops for
/// want of a kernel, after its keeper ran) and `husk rm` removes.
#[test]
fn create_makes_an_appliance_that_start_runs() {
    let home = Home::new();
    let busybox = examples_dir().join("busybox");
    let busybox = busybox.to_str().unwrap();
    let made = home.ok(&[
        "create",
        "--name",
        "made",
        "--restart",
        "always",
        "-l",
        "a=b",
        busybox,
        "--",
        "true",
    ]);
    assert_eq!(made, "made\n");
    let state = home.state_of("made");
    assert_eq!(state["status"], "exited");
    assert_eq!(state["keeper_pid"], 0);
    assert_eq!(state["labels"], serde_json::json!({ "a": "b" }));
    let args: Vec<String> = serde_json::from_value(state["args"].clone()).unwrap();
    assert_eq!(args[..2], ["run", "-d"], "{args:?}");
    assert!(args.ends_with(&["--".into(), "true".into()]), "{args:?}");
    let names = |args: &[&str]| home.ok(args).lines().map(String::from).collect::<Vec<_>>();
    assert!(names(&["ps", "-q"]).is_empty());
    assert_eq!(names(&["ps", "-q", "-f", "status=created"]), ["made"]);
    let ps = home.ok(&["ps", "-a"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with("made") && l.contains("Created")),
        "{ps}"
    );
    home.fails(
        &["wait", "made"],
        "made has not been started (husk start made)",
    );
    home.ok(&["start", "--at-boot"]);
    assert_eq!(home.state_of("made")["keeper_pid"], 0, "started at boot");
    // Started: its keeper ran (and its VM stopped for want of a kernel).
    home.husk(&["start", "made"]);
    assert_ne!(home.state_of("made")["keeper_pid"], 0);
    assert!(!home.ok(&["ps", "-a"]).contains("Created"));
    home.fails(
        &["create", "--name", "made", busybox],
        "taken by an appliance that has exited",
    );
    home.ok(&["rm", "made"]);
    assert!(!home.state().join("made").exists());
    // -d given as well (here among -dit) is taken once.
    home.ok(&["create", "-dit", "--name", "again", busybox]);
    let args: Vec<String> = serde_json::from_value(home.state_of("again")["args"].clone()).unwrap();
    assert_eq!(args[..3], ["run", "-dit", "--name"], "{args:?}");
    // start -a: what this run's console said (here, why it stopped), from
    // the log, and its status.
    home.fails(&["start", "-a", "again", "made"], "take one appliance");
    let attached = home.husk(&["start", "-a", "again"]);
    let said = String::from_utf8_lossy(&attached.stdout);
    assert!(
        !attached.status.success() && said.contains("kernel"),
        "{said}"
    );
    let again = home.husk(&["start", "-a", "again"]);
    let said_again = String::from_utf8_lossy(&again.stdout);
    assert_eq!(
        said_again.lines().count(),
        said.lines().count(),
        "{said_again}"
    );
    home.ok(&["rm", "again"]);
    home.fails(
        &["create", "--name", "bad", "-l", "=x", busybox],
        "is not KEY=VALUE",
    );
    assert!(!home.state().join("bad").exists());
}

/// `--volumes-from NAME[:ro]`: another appliance's folders and volumes
/// (its anonymous ones by name, its relative folders from where it was
/// made), at the same paths, read-only with `:ro`, less what this run
/// mounts there itself; a detached appliance records them as `--mount`s,
/// so it keeps them when the other is gone.
#[test]
fn volumes_from_takes_another_appliance_s_shares_and_keeps_them() {
    let home = Home::new();
    let busybox = examples_dir().join("busybox");
    let busybox = busybox.to_str().unwrap();
    let made_in = home.0.path().join("made-in");
    std::fs::create_dir_all(made_in.join("data")).unwrap();
    let mut create = home.command(&[
        "create",
        "--name",
        "src",
        "-v",
        "./data:/data",
        "-v",
        "vol1:/v1",
        "-v",
        "/anon",
        busybox,
    ]);
    let out = create.current_dir(&made_in).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recorded = |name: &str| -> Vec<String> {
        serde_json::from_value(home.state_of(name)["args"].clone()).unwrap()
    };
    let anon = recorded("src")
        .iter()
        .find_map(|a| a.strip_suffix(":/anon").map(String::from))
        .expect("src's anonymous volume is recorded");
    std::fs::create_dir_all(home.0.path().join("other")).unwrap();
    let other = home.0.path().join("other");
    home.ok(&[
        "create",
        "--name",
        "dst",
        "--volumes-from",
        "src:ro",
        "-v",
        &format!("{}:/v1", other.display()),
        busybox,
    ]);
    let args = recorded("dst");
    let mounts: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--mount")
        .map(|w| w[1].as_str())
        .collect();
    let data = made_in.join("data");
    assert_eq!(
        mounts,
        [
            format!("type=bind,source={},target=/data,readonly", data.display()),
            format!("type=volume,source={anon},target=/anon,readonly,volume-nocopy"),
        ],
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a.contains("volumes-from")), "{args:?}");
    // Kept when src is gone: dst's start reads only its own line (and
    // stops for want of a kernel, after its keeper ran).
    home.ok(&["rm", "src"]);
    home.husk(&["start", "dst"]);
    assert_ne!(home.state_of("dst")["keeper_pid"], 0);
    home.ok(&["rm", "dst"]);

    home.fails(
        &["run", "--volumes-from", "nope", busybox],
        "no appliance named \"nope\"",
    );
    home.fails(
        &["run", "--volumes-from", "dst:rx", busybox],
        "write NAME, NAME:ro or NAME:rw",
    );
}

/// docker's `--expose` (published by `-P`), `--mac-address`,
/// `--platform` and `--cidfile`.
#[test]
fn expose_mac_address_platform_and_cidfile_are_docker_s() {
    let home = Home::new();
    let busybox = examples_dir().join("busybox");
    let busybox = busybox.to_str().unwrap();
    let cidfile = home.0.path().join("cid");
    let cid = cidfile.to_str().unwrap();
    // The keeper records the ports -P chose before its VM fails for want
    // of a kernel.
    home.husk(&[
        "run",
        "-d",
        "--name",
        "exposed",
        "--cidfile",
        cid,
        "-P",
        "--expose",
        "7000-7001/udp",
        "--mac-address",
        "02:11:22:33:44:55",
        "--platform",
        "linux/amd64",
        busybox,
    ]);
    assert_eq!(std::fs::read_to_string(&cidfile).unwrap(), "exposed");
    let ports = home.ok(&["port", "exposed"]);
    let guest: Vec<&str> = ports
        .lines()
        .filter_map(|l| l.split(" -> ").next())
        .collect();
    assert_eq!(guest, ["7000/udp", "7001/udp"], "{ports}");
    let args: Vec<String> =
        serde_json::from_value(home.state_of("exposed")["args"].clone()).unwrap();
    assert!(
        !args.iter().any(|a| a.contains("cidfile")),
        "written once: {args:?}"
    );
    assert!(args.iter().any(|a| a == "02:11:22:33:44:55"), "{args:?}");
    home.fails(
        &["run", "-d", "--name", "again", "--cidfile", cid, busybox],
        "the file exists",
    );
    assert!(
        !home.state().join("again").exists(),
        "a refused run made its folder"
    );
    home.ok(&["rm", "exposed"]);
    home.fails(
        &["run", "--platform", "linux/arm64", busybox],
        "husk runs x86_64 guests",
    );
    home.fails(
        &["run", "--mac-address", "01:00:00:00:00:01", busybox],
        "is a multicast address",
    );
    home.fails(
        &[
            "run",
            "--net",
            "none",
            "--mac-address",
            "02:00:00:00:00:01",
            busybox,
        ],
        "this run has no network interface",
    );
    home.fails(
        &["run", "--expose", "90-80", busybox],
        "a range is FIRST-LAST",
    );
    home.fails(&["run", "--cidfile", cid, busybox], "--detach");
}

/// `husk exec` into an appliance whose guest agent drops the connection
/// (a VM on its way down) fails saying so, with a status of its own.
#[test]
fn exec_says_when_the_guest_agent_drops_its_connection() {
    use std::os::unix::net::{UnixListener, UnixStream};
    let home = Home::new();
    let (pid, start) = alive_keeper();
    home.put_state(
        "web",
        serde_json::json!({
            "name": "web", "image": "examples/busybox", "ports": [], "created_ms": 1,
            "status": "running", "keeper_pid": pid, "keeper_start": start, "cwd": "/",
            "args": ["run", "-d", "--name", "web", "examples/busybox"],
        }),
    );
    // A keeper whose agent connection's far end is closed already.
    let listener = UnixListener::bind(home.state().join("web/control.sock")).unwrap();
    let keeper = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let asked: Option<cli::vms::control::Request> = agent::read(&mut conn).unwrap();
        assert!(matches!(asked, Some(cli::vms::control::Request::Agent)));
        let (gone, agent_end) = UnixStream::pair().unwrap();
        drop(gone);
        cli::vms::control::send_with_fd(&conn, &cli::vms::control::Response::Ok, &agent_end)
            .unwrap();
        // Open until husk exec ends.
        let _ = std::io::Read::read(&mut conn, &mut [0u8; 1]);
    });
    let out = home.husk(&["exec", "web", "true"]);
    keeper.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some_and(|c| c != 0)
            && stderr.contains("web's guest agent did not take the command")
            && stderr.contains("Broken pipe"),
        "{:?}: {stderr}",
        out.status
    );
}
