//! Golden tests: every example builds, holds exactly what it should with
//! the right modes and owners (read back with debugfs or the cpio reader),
//! passes `e2fsck -fn`, and builds to the same bytes twice.

mod common;

use std::path::Path;
use std::process::Command;

use appliance_spec::Appliance;
use builder::inspect::{self, FileInfo};
use builder::{build, BuildError, Built, Input};
use common::*;

fn build_example(name: &str, cache: &Path) -> Built {
    prepare_examples();
    let file = workspace_root()
        .join("examples")
        .join(name)
        .join("appliance.toml");
    let a = Appliance::load(&file).unwrap();
    build(Input::Appliance(&a), &init(), cache, &mut |_| {}).unwrap()
}

fn find<'a>(files: &'a [FileInfo], path: &str) -> &'a FileInfo {
    files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} is not in the image: {files:#?}"))
}

fn check(files: &[FileInfo], path: &str, mode: &str, uid: u32, gid: u32) {
    let f = find(files, path);
    assert_eq!(
        (f.mode_string().as_str(), f.uid, f.gid),
        (mode, uid, gid),
        "{path}"
    );
}

fn e2fsck(image: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn hello_is_exactly_its_program_and_husks_init() {
    let cache = tempfile::tempdir().unwrap();
    let built = build_example("hello", cache.path());
    assert!(!built.cached);
    let files = inspect::files(&built.path).unwrap();
    let listing: Vec<(String, String, u32, u32)> = files
        .iter()
        .map(|f| (f.path.clone(), f.mode_string(), f.uid, f.gid))
        .collect();
    let expect = [
        ("/.husk", "drwxr-xr-x"),
        ("/.husk/init", "-rwxr-xr-x"),
        ("/.husk/run.json", "-rw-r--r--"),
        ("/bin", "drwxr-xr-x"),
        ("/bin/hello", "-rwxr-xr-x"),
        ("/dev", "drwxr-xr-x"),
        ("/dev/console", "crw-------"),
        ("/dev/null", "crw-rw-rw-"),
        ("/proc", "dr-xr-xr-x"),
        ("/run", "drwxr-xr-x"),
        ("/sys", "dr-xr-xr-x"),
        ("/tmp", "drwxrwxrwt"),
    ]
    .map(|(p, m)| (p.to_string(), m.to_string(), 0, 0));
    assert_eq!(listing, expect);
    let run = inspect::run_config(&built.path).unwrap();
    assert_eq!(run.command, ["/bin/hello"]);
    assert_eq!(run.env, ["GREETING=Hello"]);
    assert_eq!(run.hostname.as_deref(), Some("hello"));
    assert_eq!(run, built.run);
}

/// Every block group's inode table is marked zeroed: otherwise the guest
/// kernel zeroes it after each mount of a writable root (ext4's lazy
/// inode-table init), writing into the run's overlay while the VM runs
/// and powers off.
fn inode_tables_are_zeroed(image: &Path) {
    let out = Command::new("dumpe2fs").arg(image).output().unwrap();
    assert!(out.status.success(), "dumpe2fs {}", image.display());
    let text = String::from_utf8_lossy(&out.stdout);
    // "Group 0: (Blocks 0-6655) csum 0x01f2 [ITABLE_ZEROED]"
    let groups: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("Group ") && l.contains(": (Blocks "))
        .collect();
    assert!(!groups.is_empty(), "dumpe2fs listed no groups:\n{text}");
    let lazy: Vec<&&str> = groups
        .iter()
        .filter(|g| !g.contains("ITABLE_ZEROED"))
        .collect();
    assert!(lazy.is_empty(), "inode tables left to zero: {lazy:#?}");
}

#[test]
fn busybox_has_its_image_files_and_the_appliances_own() {
    let cache = tempfile::tempdir().unwrap();
    let built = build_example("busybox", cache.path());
    e2fsck(&built.path);
    inode_tables_are_zeroed(&built.path);
    let files = inspect::files(&built.path).unwrap();
    check(&files, "/bin/busybox", "-rwxr-xr-x", 0, 0);
    check(&files, "/bin/sh", "lrwxrwxrwx", 0, 0);
    check(&files, "/etc/motd", "-rw-r--r--", 0, 0);
    assert_eq!(find(&files, "/etc/motd").size, 29);
    check(&files, "/data", "drwxr-x---", 1000, 1000);
    check(&files, "/usr/bin/env", "lrwxrwxrwx", 0, 0);
    check(&files, "/.husk/init", "-rwxr-xr-x", 0, 0);
    check(&files, "/tmp", "drwxrwxrwt", 0, 0);
    check(&files, "/home/user", "drwxr-xr-x", 0, 0);
    // The symlink's target, as debugfs reads it.
    let out = Command::new("debugfs")
        .args(["-R", "stat /usr/bin/env"])
        .arg(&built.path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Fast link dest: \"/bin/busybox\""));
    let run = inspect::run_config(&built.path).unwrap();
    assert_eq!(run.command[0], "/bin/sh");
    // The image's Env, then the appliance's.
    assert_eq!(run.env, ["PATH=/usr/bin:/bin", "PS1=husk$ "]);
    assert_eq!(run.workdir.as_deref(), Some("/data"));
    assert_eq!(run.user.as_deref(), Some("1000:1000"));
}

#[test]
fn builds_are_reproducible_and_cached() {
    for name in ["hello", "busybox"] {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = build_example(name, a.path());
        // Time moves on between builds; the image must not notice.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = build_example(name, b.path());
        assert_eq!(first.digest, second.digest, "{name} differs between builds");
        assert_eq!(
            std::fs::read(&first.path).unwrap(),
            std::fs::read(&second.path).unwrap()
        );
        let again = build_example(name, a.path());
        assert!(
            again.cached,
            "{name}: a rebuild with no change is a cache hit"
        );
        assert_eq!(again.path, first.path);
    }
}

fn scratch_appliance(dir: &Path, extra: &str) -> Appliance {
    std::fs::write(dir.join("prog"), b"#!/bin/sh\necho hi\n").unwrap();
    let text = format!(
        "[appliance]\nname = \"t\"\n[rootfs]\nformat = \"ext4\"\n{extra}\n\
         [[rootfs.files]]\nsrc = \"prog\"\ndst = \"/prog\"\nmode = \"0755\"\n\
         [run]\ncommand = [\"/prog\"]\n"
    );
    let file = dir.join("appliance.toml");
    std::fs::write(&file, text).unwrap();
    Appliance::load(&file).unwrap()
}

#[test]
fn a_changed_input_makes_a_new_image() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let a = scratch_appliance(dir.path(), "");
    let first = build(Input::Appliance(&a), &init(), cache.path(), &mut |_| {}).unwrap();
    std::fs::write(dir.path().join("prog"), b"#!/bin/sh\necho changed\n").unwrap();
    let second = build(Input::Appliance(&a), &init(), cache.path(), &mut |_| {}).unwrap();
    assert!(!second.cached);
    assert_ne!(first.digest, second.digest);
    e2fsck(&second.path);
}

#[test]
fn a_failed_build_names_its_input_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let a = scratch_appliance(dir.path(), "");
    std::fs::remove_file(dir.path().join("prog")).unwrap();
    let err = build(Input::Appliance(&a), &init(), cache.path(), &mut |_| {}).unwrap_err();
    let text = chain(&err);
    assert!(text.contains("prog"), "{text}");
    assert!(cache_images(cache.path()).is_empty());

    // Too small a fixed size: refused, with what it needs.
    let a = scratch_appliance(dir.path(), "size = \"1MiB\"");
    let err = build(Input::Appliance(&a), &init(), cache.path(), &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            &err,
            BuildError::Image(builder::image::ImageError::TooSmall { .. })
        ),
        "{err:?}"
    );
    assert!(
        cache_images(cache.path()).is_empty(),
        "{:?}",
        cache_images(cache.path())
    );
}

#[test]
fn a_dynamic_init_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let a = scratch_appliance(dir.path(), "");
    let dynamic = Path::new("/bin/true");
    let err = build(Input::Appliance(&a), dynamic, cache.path(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, BuildError::InitNotStatic(_)), "{err:?}");
}
