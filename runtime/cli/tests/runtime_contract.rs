//! husk-runtime's command line as runc's callers use it, where no VM is
//! needed: bad input is a clear error on stderr and in `--log` (in the
//! format asked), a non-zero exit, and nothing left under `--root`.
//! Creating and running containers is tested in the boot tests.

use std::path::Path;
use std::process::{Command, Output};

const RUNTIME: &str = env!("CARGO_BIN_EXE_husk-runtime");

fn runtime(root: &Path, log: &Path, args: &[&str]) -> Output {
    Command::new(RUNTIME)
        .arg("--root")
        .arg(root)
        .arg("--log")
        .arg(log)
        .args(["--log-format", "json"])
        .args(args)
        .output()
        .expect("husk-runtime runs")
}

/// Every entry under `dir`.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A bundle whose config.json is `config` (none when `None`), with a
/// `rootfs/` folder.
fn bundle(config: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rootfs")).unwrap();
    if let Some(c) = config {
        std::fs::write(dir.path().join("config.json"), c).unwrap();
    }
    dir
}

const GOOD: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
  "process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#;

#[test]
fn bad_input_is_a_clear_error_in_the_log_and_leaves_nothing() {
    let no_config = bundle(None);
    let not_json = bundle(Some("{ this is not json"));
    let no_rootfs = bundle(Some(
        r#"{"ociVersion":"1.0.2","root":{"path":"missing"},
        "process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
    ));
    let tty_no_socket = bundle(Some(
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"terminal":true,"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
    ));
    let hook_in_the_container = bundle(Some(
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}},
        "hooks":{"createContainer":[{"path":"/bin/true"}]}}"#,
    ));
    let failing_prestart = bundle(Some(
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}},
        "hooks":{"prestart":[{"path":"/bin/sh","args":["sh","-c","echo no way >&2; exit 4"]}]}}"#,
    ));
    let good = bundle(Some(GOOD));
    let b = |d: &tempfile::TempDir| d.path().display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["state".into(), "nosuch".into()],
            "container nosuch does not exist",
        ),
        (
            vec!["start".into(), "nosuch".into()],
            "container nosuch does not exist",
        ),
        (
            vec!["kill".into(), "nosuch".into(), "TERM".into()],
            "container nosuch does not exist",
        ),
        (
            vec!["delete".into(), "nosuch".into()],
            "container nosuch does not exist",
        ),
        (
            vec!["ps".into(), "nosuch".into()],
            "container nosuch does not exist",
        ),
        (
            vec!["pause".into(), "nosuch".into()],
            "container nosuch does not exist",
        ),
        (
            vec!["resume".into(), "nosuch".into()],
            "container nosuch does not exist",
        ),
        (
            vec![
                "update".into(),
                "--resources".into(),
                "-".into(),
                "nosuch".into(),
            ],
            "container nosuch does not exist",
        ),
        (
            vec!["events".into(), "--stats".into(), "nosuch".into()],
            "container nosuch does not exist",
        ),
        (
            vec!["kill".into(), "nosuch".into(), "SIGNOPE".into()],
            "NOPE",
        ),
        (vec!["state".into(), "../escape".into()], "not a valid name"),
        (
            vec![
                "create".into(),
                "--bundle".into(),
                b(&no_config),
                "c1".into(),
            ],
            "has no config.json",
        ),
        (
            vec![
                "create".into(),
                "--bundle".into(),
                b(&not_json),
                "c1".into(),
            ],
            "is not a valid OCI runtime config",
        ),
        (
            vec![
                "create".into(),
                "--bundle".into(),
                b(&no_rootfs),
                "c1".into(),
            ],
            "root.path missing: no such folder",
        ),
        (
            vec![
                "create".into(),
                "--bundle".into(),
                b(&tty_no_socket),
                "c1".into(),
            ],
            "--console-socket is needed",
        ),
        (
            vec![
                "create".into(),
                "--bundle".into(),
                b(&hook_in_the_container),
                "c1".into(),
            ],
            "createContainer hooks",
        ),
        (
            vec![
                "create".into(),
                "--bundle".into(),
                b(&failing_prestart),
                "c1".into(),
            ],
            "prestart hook /bin/sh",
        ),
        (
            vec![
                "create".into(),
                "--bundle".into(),
                "/nonexistent/bundle".into(),
                "c1".into(),
            ],
            "no such folder",
        ),
        (
            vec![
                "create".into(),
                "--preserve-fds".into(),
                "2".into(),
                "--bundle".into(),
                b(&good),
                "c1".into(),
            ],
            "cannot be passed into a VM",
        ),
        (
            vec!["exec".into(), "c1".into(), "true".into()],
            "container c1 does not exist",
        ),
    ];
    for (args, why) in cases {
        let root = tempfile::tempdir().unwrap();
        let log = root.path().join("log.json");
        let state = root.path().join("state");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = runtime(&state, &log, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(why),
            "{args:?}: stderr {stderr:?} lacks {why:?}"
        );
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        let line: serde_json::Value = serde_json::from_str(logged.lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("{args:?}: log {logged:?} is not JSON lines: {e}"));
        assert_eq!(line["level"], "error", "{args:?}");
        assert!(
            line["msg"].as_str().unwrap_or("").contains(why),
            "{args:?}: {line}"
        );
        assert!(
            line["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert!(
            entries(&state).is_empty(),
            "{args:?} left {:?} under --root",
            entries(&state)
        );
    }
}

#[test]
fn a_text_log_and_a_missing_container_in_list_and_version() {
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("log.txt");
    let out = Command::new(RUNTIME)
        .arg("--root")
        .arg(root.path().join("state"))
        .arg("--log")
        .arg(&log)
        .args(["state", "gone"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("level=error") && text.contains("container gone does not exist"),
        "{text}"
    );

    let out = runtime(
        &root.path().join("state"),
        &log,
        &["list", "--format", "json"],
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");

    let out = Command::new(RUNTIME).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && version.contains("spec: 1.0.2"),
        "{version}"
    );
}

#[test]
fn features_is_the_oci_document() {
    let out = Command::new(RUNTIME).arg("features").output().unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ociVersionMax"], "1.0.2");
    assert_eq!(
        doc["hooks"],
        serde_json::json!(["prestart", "createRuntime", "poststart", "poststop"])
    );
    assert!(doc["linux"]["namespaces"].is_array());
}
