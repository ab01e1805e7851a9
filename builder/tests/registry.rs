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

/// A registry on a free loopback port, stopped when dropped.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
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
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
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
    let registry = Registry::start();
    let layout = tempfile::tempdir().unwrap();
    multi_arch_layout(layout.path());
    let reference = format!("docker://{}/husk/multi:v1", registry.addr);
    let out = Command::new("skopeo")
        .args(["copy", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", layout.path().display()))
        .arg(&reference)
        .output()
        .expect("skopeo runs (ci/setup installs it)");
    assert!(
        out.status.success(),
        "skopeo push: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Setting the environment is safe here: this binary runs one test.
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
