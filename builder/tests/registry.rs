//! Registry images (`docker://`), pulled by husk-pull from Debian's
//! `docker-registry` on 127.0.0.1 after `skopeo` pushed a multi-arch image
//! there. Needs the "registry" feature (ci/test runs it with it):
//! `cargo test -p builder --features registry --test registry`.

#![cfg(feature = "registry")]

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use appliance_spec::Source;
use builder::{build, Input};
use common::*;

/// Every test here sets the environment husk-pull inherits: one at a time.
static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `husk:husk-secret`, bcrypt (cost 4) as the registry's htpasswd wants.
const HTPASSWD: &str = "husk:$2b$04$YkVeFlttdDeEQyIZCDJV7Oz.vpCmB39sOUE62CskaEQfq/cZvm226\n";

/// A registry on a free loopback port, stopped when dropped.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// With `htpasswd`, it wants those credentials (Basic auth).
    fn start(htpasswd: Option<&str>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let auth = match htpasswd {
            Some(users) => {
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, users).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: husk-test\n    path: {}\n",
                    file.display()
                )
            }
            None => String::new(),
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry runs (ci/setup installs it)");
        let started = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_pushed_multi_arch_image_is_pulled_built_and_then_cached() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let registry = Registry::start(None);
    let reference = format!("docker://{}/husk/multi:v1", registry.addr);
    push(&reference, None);

    // The environment is this test's while it holds ENV.
    std::env::set_var("HUSK_PULL", env!("CARGO_BIN_EXE_husk-pull"));
    let cache = tempfile::tempdir().unwrap();
    let source: Source = reference.parse().unwrap();
    let built = build(Input::Image(&source), &init(), cache.path(), &mut |_| {}).unwrap();
    assert!(!built.cached);
    assert_eq!(arch_of(&built.path), "amd64");
    let blobs = std::fs::read_dir(cache.path().join("blobs/sha256"))
        .unwrap()
        .count();
    assert!(
        blobs >= 4,
        "index, manifest, config and layer stored by digest: {blobs}"
    );

    // Pulled once: with the registry gone the build is still a cache hit.
    drop(registry);
    let again = build(Input::Image(&source), &init(), cache.path(), &mut |_| {}).unwrap();
    assert!(again.cached);
    assert_eq!(again.digest, built.digest);

    // A reference nobody pushed: husk-pull's failure is reported.
    let missing: Source = "docker://127.0.0.1:9/none:latest".parse().unwrap();
    let err = build(Input::Image(&missing), &init(), cache.path(), &mut |_| {}).unwrap_err();
    assert!(chain(&err).contains("husk-pull failed"), "{}", chain(&err));
}

/// A pulled tag is used as it is until it is pulled again (`husk pull`,
/// `--pull always`), which takes the image the tag names now.
#[test]
fn a_tag_pulled_again_takes_the_image_it_names_now() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let registry = Registry::start(None);
    let reference = format!("docker://{}/husk/moving:v1", registry.addr);
    let image = |cmd: &str| {
        let dir = tempfile::tempdir().unwrap();
        let layer = tar(&[E::File("x", cmd.as_bytes())]);
        oci_layout(dir.path(), &[(layer, Compression::Gzip)], &[cmd]);
        dir
    };
    push_layout(image("/first").path(), &reference, None);
    std::env::set_var("HUSK_PULL", env!("CARGO_BIN_EXE_husk-pull"));
    let cache = tempfile::tempdir().unwrap();
    let source: Source = reference.parse().unwrap();
    let build_it = || build(Input::Image(&source), &init(), cache.path(), &mut |_| {}).unwrap();
    let first = build_it();
    assert_eq!(first.run.command, ["/first"]);

    push_layout(image("/second").path(), &reference, None);
    let kept = build_it();
    assert!(kept.cached, "a pulled tag is not fetched again by itself");
    assert_eq!(kept.run.command, ["/first"]);
    assert!(builder::oci::is_pulled(&reference, cache.path()));

    builder::oci::run_pull(&reference, cache.path()).unwrap();
    let second = build_it();
    assert!(!second.cached);
    assert_ne!(second.digest, first.digest);
    assert_eq!(second.run.command, ["/second"]);
}

/// `skopeo copy` of the multi-arch test image to `reference`.
fn push(reference: &str, creds: Option<&str>) {
    let layout = tempfile::tempdir().unwrap();
    multi_arch_layout(layout.path());
    push_layout(layout.path(), reference, creds);
}

/// `skopeo copy` of the image layout at `layout` (tag `latest`) to
/// `reference`.
fn push_layout(layout: &std::path::Path, reference: &str, creds: Option<&str>) {
    let mut skopeo = Command::new("skopeo");
    skopeo.args(["copy", "--all", "--dest-tls-verify=false"]);
    if let Some(c) = creds {
        skopeo.args(["--dest-creds", c]);
    }
    let out = skopeo
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(reference)
        .output()
        .expect("skopeo runs (ci/setup installs it)");
    assert!(
        out.status.success(),
        "skopeo push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A registry that wants credentials: refused without them, with a hint;
/// pulled with what `docker login` or `podman login` saved (the auth file
/// of either, or a credential helper one names); refused, saying so,
/// with a wrong password.
#[test]
fn a_registry_that_wants_credentials_gets_the_saved_ones() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let registry = Registry::start(Some(HTPASSWD));
    let reference = format!("docker://{}/husk/private:v1", registry.addr);
    push(&reference, Some("husk:husk-secret"));
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HUSK_PULL", env!("CARGO_BIN_EXE_husk-pull"));
    std::env::set_var("HOME", home.path());
    for var in ["REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG"] {
        std::env::remove_var(var);
    }
    let source: Source = reference.parse().unwrap();
    // The image's architecture, read before its cache goes.
    let pull = || {
        let cache = tempfile::tempdir().unwrap();
        build(Input::Image(&source), &init(), cache.path(), &mut |_| {}).map(|b| arch_of(&b.path))
    };

    // What husk-pull says (on its stderr, which husk passes through).
    let refused = || {
        let cache = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_husk-pull"))
            .arg(&reference)
            .env("HUSK_CACHE_DIR", cache.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "pulled where it should be refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let err = refused();
    assert!(
        err.contains("wants credentials") && err.contains("docker login"),
        "{err}"
    );

    // podman login's file, named by REGISTRY_AUTH_FILE.
    let auth_file = home.path().join("auth.json");
    let saved = |auth: &str| {
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            registry.addr
        )
    };
    std::fs::write(&auth_file, saved("aHVzazpodXNrLXNlY3JldA==")).unwrap();
    std::env::set_var("REGISTRY_AUTH_FILE", &auth_file);
    assert_eq!(pull().unwrap(), "amd64");

    std::fs::write(&auth_file, saved("aHVzazp3cm9uZw==")).unwrap(); // husk:wrong
    let err = refused();
    assert!(err.contains("refused the saved credentials"), "{err}");
    std::env::remove_var("REGISTRY_AUTH_FILE");

    // docker's config.json naming a credential helper for the registry.
    let bin = home.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let helper = bin.join("docker-credential-husktest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread registry\n[ \"$1 $registry\" = \"get {}\" ] || exit 1\n\
             echo '{{\"Username\": \"husk\", \"Secret\": \"husk-secret\"}}'\n",
            registry.addr
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let docker = home.path().join(".docker");
    std::fs::create_dir(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"credHelpers": {{"{}": "husktest"}}}}"#, registry.addr),
    )
    .unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut with_bin = std::ffi::OsString::from(&bin);
    with_bin.push(":");
    with_bin.push(&path);
    std::env::set_var("PATH", with_bin);
    let built = pull();
    std::env::set_var("PATH", path);
    assert_eq!(built.unwrap(), "amd64");
}

/// `husk-pull login` (what `husk login` runs) checks the credentials with
/// the registry before it saves them: a wrong password is refused and
/// nothing is written; the right one is saved where podman's are (here
/// `$REGISTRY_AUTH_FILE`), a pull then uses it, and `logout` removes it.
#[test]
fn login_checks_saves_and_logout_removes_the_credentials() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let registry = Registry::start(Some(HTPASSWD));
    let reference = format!("docker://{}/husk/login:v1", registry.addr);
    push(&reference, Some("husk:husk-secret"));
    let home = tempfile::tempdir().unwrap();
    let auth_file = home.path().join("containers/auth.json");
    std::env::set_var("HOME", home.path());
    std::env::set_var("REGISTRY_AUTH_FILE", &auth_file);
    for var in ["XDG_RUNTIME_DIR", "DOCKER_CONFIG"] {
        std::env::remove_var(var);
    }
    // Each run with a cache of its own: a pull fetches every blob.
    let husk_pull = |args: &[&str], stdin: &str| {
        let cache = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_husk-pull"))
            .args(args)
            .env("HUSK_CACHE_DIR", cache.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // husk-pull may refuse what it is given and exit before it reads
        // all of it.
        match std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("its stdin: {e}"),
            _ => {}
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (ok, err) = husk_pull(&["login", &registry.addr], "husk\nwrong\n");
    assert!(
        !ok && err.contains("refused the user name and password"),
        "{err}"
    );
    assert!(!auth_file.exists(), "refused credentials were saved");
    let (ok, err) = husk_pull(&["login", &registry.addr], "husk\n");
    assert!(!ok && err.contains("a user name and a password"), "{err}");

    let (ok, err) = husk_pull(&["login", &registry.addr], "husk\nhusk-secret\n");
    assert!(ok, "{err}");
    let saved = std::fs::read_to_string(&auth_file).unwrap();
    assert!(saved.contains("aHVzazpodXNrLXNlY3JldA=="), "{saved}");
    let (ok, err) = husk_pull(&[&reference], "");
    assert!(ok, "a pull with the saved credentials: {err}");

    let (ok, err) = husk_pull(&["logout", &registry.addr], "");
    assert!(ok, "{err}");
    let (ok, err) = husk_pull(&[&reference], "");
    assert!(!ok && err.contains("wants credentials"), "{err}");
    let (ok, err) = husk_pull(&["logout", &registry.addr], "");
    assert!(!ok && err.contains("not logged in"), "{err}");
    std::env::remove_var("REGISTRY_AUTH_FILE");
}
