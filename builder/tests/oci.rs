//! OCI images as sources: made with real tools (umoci, skopeo) and by
//! hand (whiteouts, opaque folders, hard links, every compression), and
//! hostile layers that try to write outside the root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use appliance_spec::Source;
use builder::inspect::{self, FileInfo};
use builder::{build, Built, Input};
use common::*;

fn build_layout(dir: &Path, cache: &Path) -> Result<Built, builder::BuildError> {
    let source = Source::OciLayout {
        dir: dir.to_path_buf(),
        tag: Some("latest".into()),
    };
    build(Input::Image(&source), &init(), cache, &mut |_| {})
}

fn paths(files: &[FileInfo]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("tool runs (installed by ci/setup)");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A busybox OCI image made with umoci: a base layer, then a layer that
/// deletes a file and a folder (umoci writes whiteouts) and adds one.
fn umoci_image(dir: &Path) -> PathBuf {
    let image = dir.join("image");
    let bundle = dir.join("bundle");
    let tag = format!("{}:latest", image.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&image));
    run(Command::new("umoci").args(["new", "--image", &tag]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &tag])
        .arg(&bundle));
    let root = bundle.join("rootfs");
    for d in ["bin", "etc/old", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::write(root.join("etc/gone"), "deleted by layer 2\n").unwrap();
    std::fs::write(root.join("etc/old/file"), "x").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &tag])
        .arg(&bundle));
    std::fs::remove_file(root.join("etc/gone")).unwrap();
    std::fs::remove_dir_all(root.join("etc/old")).unwrap();
    std::fs::write(root.join("etc/added"), "added by layer 2\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &tag])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &tag,
        "--config.entrypoint",
        "/bin/busybox",
        "--config.cmd",
        "sh",
        "--config.stopsignal",
        "SIGQUIT",
        "--config.exposedports",
        "8080/tcp",
        "--config.exposedports",
        "53/udp",
        "--config.exposedports",
        "nonsense/sctp",
        "--config.volume",
        "/var/lib/db/",
        "--config.volume",
        "/cache",
        "--config.volume",
        "relative",
        "--config.volume",
        "/",
        "--config.label",
        "org.opencontainers.image.title=test",
    ]));
    image
}

/// Puts a docker HEALTHCHECK into the config of the layout's image (as
/// docker writes one; OCI and umoci have none), with new digests up the
/// chain from the config blob to `index.json`.
fn add_healthcheck(image: &Path) {
    use sha2::Digest;
    let blob = |digest: &str| {
        image
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let put = |value: &serde_json::Value| -> (String, usize) {
        let bytes = serde_json::to_vec(value).unwrap();
        let digest = format!("sha256:{:x}", sha2::Sha256::digest(&bytes));
        std::fs::write(blob(&digest), &bytes).unwrap();
        (digest, bytes.len())
    };
    let read = |path: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let mut index = read(image.join("index.json"));
    let mut manifest = read(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let mut config = read(blob(manifest["config"]["digest"].as_str().unwrap()));
    config["config"]["Healthcheck"] = serde_json::json!({
        "Test": ["CMD-SHELL", "wget -q -O- http://localhost/ || exit 1"],
        "Interval": 5_000_000_000u64,
        "Timeout": 0,
        "Retries": 2,
    });
    let (digest, size) = put(&config);
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = size.into();
    let (digest, size) = put(&manifest);
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = size.into();
    std::fs::write(
        image.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

#[test]
fn a_docker_healthcheck_in_the_image_is_kept_for_the_keeper() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let image = umoci_image(dir.path());
    assert_eq!(
        build_layout(&image, cache.path()).unwrap().run.healthcheck,
        None
    );
    add_healthcheck(&image);
    let built = build_layout(&image, cache.path()).unwrap();
    assert_eq!(
        built.run.healthcheck,
        Some(husk_init::config::ImageHealthcheck {
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "wget -q -O- http://localhost/ || exit 1".into()
            ],
            interval_ms: 5000,
            timeout_ms: 30_000,
            start_period_ms: 0,
            retries: 2,
        }),
        "docker's defaults where it gives 0 or nothing"
    );
    // As the build wrote it beside the image, where the keeper reads it.
    assert_eq!(
        builder::images::run_config_of(&built.path)
            .unwrap()
            .healthcheck,
        built.run.healthcheck
    );
}

#[test]
fn umoci_layout_and_its_skopeo_archives_build_the_same_tree() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let image = umoci_image(dir.path());
    let built = build_layout(&image, cache.path()).unwrap();
    let files = inspect::files(&built.path).unwrap();
    let p = paths(&files);
    assert!(
        p.contains(&"/etc/added") && p.contains(&"/bin/busybox"),
        "{p:?}"
    );
    assert!(!p.contains(&"/etc/gone"), "whiteout ignored: {p:?}");
    assert!(!p.iter().any(|f| f.starts_with("/etc/old")), "{p:?}");
    assert_eq!(built.run.command, ["/bin/busybox", "sh"]);
    assert_eq!(
        built.run.entrypoint,
        ["/bin/busybox"],
        "-- ARGS replace sh alone"
    );
    assert_eq!(built.run.stop_signal, Some(3), "STOPSIGNAL SIGQUIT");
    // EXPOSE, what husk reads of it (for husk run -P).
    assert_eq!(built.run.exposed_ports, ["53/udp", "8080/tcp"]);
    // VOLUME, what husk gives an anonymous volume (no root, no relative).
    assert_eq!(built.run.volumes, ["/cache", "/var/lib/db"]);
    assert_eq!(
        built.run.labels,
        [(
            "org.opencontainers.image.title".to_string(),
            "test".to_string()
        )]
        .into()
    );

    // The same image as an OCI archive and as a docker archive.
    let oci_archive = dir.path().join("image.oci.tar");
    let docker_archive = dir.path().join("image.docker.tar");
    let src = format!("oci:{}:latest", image.display());
    run(Command::new("skopeo")
        .args(["copy", &src])
        .arg(format!("oci-archive:{}:latest", oci_archive.display())));
    run(Command::new("skopeo").args(["copy", &src]).arg(format!(
        "docker-archive:{}:husk/test:latest",
        docker_archive.display()
    )));
    let listing = |f: &[FileInfo]| -> Vec<(String, String, u32, u32, u64)> {
        f.iter()
            .map(|x| (x.path.clone(), x.mode_string(), x.uid, x.gid, x.size))
            .collect()
    };
    for source in [
        Source::OciArchive(oci_archive),
        Source::DockerArchive(docker_archive),
    ] {
        let other = build(Input::Image(&source), &init(), cache.path(), &mut |_| {}).unwrap();
        let other_files = inspect::files(&other.path).unwrap();
        assert_eq!(listing(&other_files), listing(&files), "{source:?}");
        assert_eq!(other.run.command, ["/bin/busybox", "sh"], "{source:?}");
        assert_eq!(other.run.stop_signal, Some(3), "{source:?}");
        assert_eq!(
            other.run.exposed_ports,
            ["53/udp", "8080/tcp"],
            "{source:?}"
        );
        assert_eq!(other.run.volumes, ["/cache", "/var/lib/db"], "{source:?}");
    }
}

#[test]
fn whiteouts_opaque_folders_hard_links_and_every_compression() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let base = tar(&[
        E::Dir("etc/"),
        E::File("etc/a", b"a"),
        E::File("etc/b", b"b"),
        E::Dir("opq/"),
        E::File("opq/x", b"x"),
        E::Dir("opq/sub/"),
        E::File("opq/sub/y", b"y"),
        E::Xattr("user.husk", b"kept"),
        E::Owned("data/file", b"payload", 0o4750, 1000, 100),
        E::HardLink("data/link", "data/file"),
        E::Symlink("lnk", "data/file"),
        E::CharDev("dev/tty9"),
    ]);
    let upper = tar(&[
        E::Dir("opq/"),
        E::File("opq/z", b"z"),
        E::File("opq/.wh..wh..opq", b""),
        E::File("etc/.wh.a", b""),
    ]);
    let top = tar(&[E::File("etc/c", b"c")]);
    oci_layout(
        dir.path(),
        &[
            (base, Compression::Gzip),
            (upper, Compression::Zstd),
            (top, Compression::None),
        ],
        &["/bin/sh"],
    );
    let built = build_layout(dir.path(), cache.path()).unwrap();
    let files = inspect::files(&built.path).unwrap();
    let p = paths(&files);
    for present in [
        "/etc/b",
        "/etc/c",
        "/opq/z",
        "/data/file",
        "/data/link",
        "/lnk",
    ] {
        assert!(p.contains(&present), "{present} missing: {p:?}");
    }
    for absent in ["/etc/a", "/opq/x", "/opq/sub", "/opq/sub/y", "/dev/tty9"] {
        assert!(!p.contains(&absent), "{absent} should be gone: {p:?}");
    }
    let f = files.iter().find(|f| f.path == "/data/file").unwrap();
    assert_eq!(
        (f.mode_string().as_str(), f.uid, f.gid),
        ("-rwsr-x---", 1000, 100)
    );
    let out = Command::new("debugfs")
        .args(["-R", "stat /data/link"])
        .arg(&built.path)
        .output()
        .unwrap();
    let stat = String::from_utf8_lossy(&out.stdout);
    assert!(stat.contains("Links: 2"), "not a hard link: {stat}");
    let out = Command::new("debugfs")
        .args(["-R", "ea_get /data/file user.husk"])
        .arg(&built.path)
        .output()
        .unwrap();
    let xattr = String::from_utf8_lossy(&out.stdout);
    assert!(xattr.contains("kept"), "extended attribute lost: {xattr}");
    assert!(
        stat.contains("1600000000") || stat.contains("2020"),
        "mtime lost: {stat}"
    );
}

/// A base layer plus one hostile layer, built; returns the result.
fn hostile(
    dir: &Path,
    cache: &Path,
    evil: Vec<u8>,
) -> (Result<Built, builder::BuildError>, String) {
    let base = tar(&[E::Dir("etc/"), E::File("etc/hostname", b"inside")]);
    let digests = oci_layout(
        dir,
        &[(base, Compression::Gzip), (evil, Compression::Gzip)],
        &["/bin/sh"],
    );
    (build_layout(dir, cache), digests[1].clone())
}

#[test]
fn layers_cannot_write_outside_the_root() {
    let cache = tempfile::tempdir().unwrap();
    // A folder on the host that hostile paths aim at.
    let host = tempfile::tempdir().unwrap();
    let host_path = host
        .path()
        .to_str()
        .unwrap()
        .trim_start_matches('/')
        .to_string();

    // `..` climbing out: refused, naming the layer and the entry.
    let dir = tempfile::tempdir().unwrap();
    let climb = format!("../../../../../../../../{host_path}/climbed");
    let (result, digest) = hostile(dir.path(), cache.path(), tar(&[E::File(&climb, b"x")]));
    let text = chain(&result.unwrap_err());
    assert!(
        text.contains(&digest) && text.contains("climbs out"),
        "{text}"
    );
    assert!(
        cache_images(cache.path()).is_empty(),
        "a failed build left files"
    );

    // A hard link to a host file by climbing: refused.
    let dir = tempfile::tempdir().unwrap();
    let (result, _) = hostile(
        dir.path(),
        cache.path(),
        tar(&[E::HardLink("pw", "../../../../../../../etc/passwd")]),
    );
    assert!(chain(&result.unwrap_err()).contains("climbs out"));

    // A hard link to an absolute path means the image's own file.
    let dir = tempfile::tempdir().unwrap();
    let (result, _) = hostile(
        dir.path(),
        cache.path(),
        tar(&[E::HardLink("hn", "/etc/hostname")]),
    );
    result.expect("a link to the image's own /etc/hostname is fine");

    // Symlinks to the host's folder (absolute and climbing), then entries
    // beneath them, and an absolute entry path: all land inside the image.
    let dir = tempfile::tempdir().unwrap();
    let abs_target = format!("/{host_path}");
    let rel_target = format!("../../../../../../../../{host_path}");
    let (result, _) = hostile(
        dir.path(),
        cache.path(),
        tar(&[
            E::Dir(&format!("{host_path}/")),
            E::Symlink("abs", &abs_target),
            E::Symlink("rel", &rel_target),
            E::File("abs/via-abs", b"1"),
            E::File("rel/via-rel", b"2"),
            E::File(&format!("/{host_path}/absolute-entry"), b"3"),
        ]),
    );
    let built = result.unwrap();
    assert_eq!(
        std::fs::read_dir(host.path()).unwrap().count(),
        0,
        "a layer wrote into the host folder"
    );
    let files = inspect::files(&built.path).unwrap();
    let p = paths(&files);
    for name in ["via-abs", "via-rel", "absolute-entry"] {
        let inside = format!("/{host_path}/{name}");
        assert!(
            p.contains(&inside.as_str()),
            "{inside} not in the image: {p:?}"
        );
    }
}

#[test]
fn corrupt_and_truncated_layers_are_named() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layer = tar(&[E::File("big", &[7u8; 100_000])]);
    let digests = oci_layout(dir.path(), &[(layer.clone(), Compression::Gzip)], &["/x"]);
    let blob = dir
        .path()
        .join("blobs/sha256")
        .join(digests[0].trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let text = chain(&build_layout(dir.path(), cache.path()).unwrap_err());
    assert!(text.contains(&digests[0]), "{text}");
    assert!(text.contains("corrupt"), "{text}");

    // Truncated, with a digest that matches the truncated bytes: the tar
    // itself is bad.
    let dir = tempfile::tempdir().unwrap();
    let (gz, _) = compress(&layer, Compression::Gzip);
    let cut = gz[..gz.len() / 2].to_vec();
    oci_layout(dir.path(), &[(cut.clone(), Compression::AsGzip)], &["/x"]);
    let text = chain(&build_layout(dir.path(), cache.path()).unwrap_err());
    assert!(text.contains(&sha256(&cut)), "{text}");
    assert!(cache_images(cache.path()).is_empty());
}

#[test]
fn a_layout_without_the_tag_lists_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    oci_layout(
        dir.path(),
        &[(tar(&[E::File("f", b"")]), Compression::None)],
        &["/f"],
    );
    let source = Source::OciLayout {
        dir: dir.path().to_path_buf(),
        tag: Some("nope".into()),
    };
    let err = build(Input::Image(&source), &init(), cache.path(), &mut |_| {}).unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("no image tagged \"nope\"") && text.contains("latest"),
        "{text}"
    );
}

#[test]
fn a_multi_arch_index_gives_linux_amd64() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    multi_arch_layout(dir.path());
    let built = build_layout(dir.path(), cache.path()).unwrap();
    assert_eq!(arch_of(&built.path), "amd64");
}
