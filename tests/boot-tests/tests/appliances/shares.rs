//! Shared folders (virtio-fs through virtiofsd), seen from both sides: the
//! guest works in the folder, the test checks the result on the host. The
//! folders live on the test's own tmpfs; every test checks that no
//! virtiofsd it caused is left, also after `kill -9` of husk.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use boot_tests::husk::husk_run;
use libtest_mimic::{Failed, Trial};

use super::network::{children, comm, gone, start_until_ready};
use super::{expect, run};

const IMAGE: &str = "oci:examples/busybox/image:latest";

pub fn trials() -> Vec<Trial> {
    vec![
        boot_tests::trial(
            "shares_posix_behaviour_is_seen_from_both_sides",
            posix_both_sides,
        ),
        boot_tests::trial(
            "shares_readonly_and_two_at_once_for_a_non_root_user",
            readonly_and_two_shares,
        ),
        boot_tests::trial(
            "shares_a_missing_folder_is_refused_before_boot",
            missing_folder,
        ),
        boot_tests::trial(
            "shares_a_folder_removed_under_the_guest_gives_errors_not_a_crash",
            folder_removed,
        ),
        boot_tests::trial(
            "shares_a_root_from_a_folder_runs_and_writes_land_in_it",
            root_from_folder,
        ),
        boot_tests::trial(
            "shares_nothing_is_left_after_kill_9_of_husk",
            nothing_left_after_kill,
        ),
        boot_tests::trial(
            "shares_single_files_both_ways_read_only_and_nothing_left_after_kill_9",
            single_files,
        ),
        boot_tests::trial(
            "shares_a_file_onto_a_link_to_nothing_in_a_folder_root",
            file_onto_dangling_link,
        ),
    ]
}

/// A fresh folder on the test's tmpfs (not the work tree's 9p share).
pub(super) fn folder(name: &str) -> Result<tempfile::TempDir, Failed> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("husk-test-{name}-"))
        .tempdir_in("/tmp")?)
}

/// virtiofsd processes whose command line names `path`.
pub(super) fn virtiofsd_serving(path: &Path) -> Vec<u32> {
    let want = path.to_string_lossy().into_owned();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline);
            comm(*pid) == "virtiofsd" && text.split('\0').any(|a| a == want)
        })
        .collect()
}

/// Nothing of a run that shared `path` is left: no virtiofsd serving it
/// (waiting a moment for one that is ending) and no mount of it.
fn nothing_left(path: &Path) -> Result<(), Failed> {
    let left: Vec<u32> = virtiofsd_serving(path)
        .into_iter()
        .filter(|p| !gone(*p))
        .collect();
    if !left.is_empty() {
        return Err(format!("virtiofsd {left:?} still serves {}", path.display()).into());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    if mounts.contains(&*path.to_string_lossy()) {
        return Err(format!("{} is still mounted:\n{mounts}", path.display()).into());
    }
    Ok(())
}

/// The guest tool for what busybox cannot do, compiled into `dir`.
fn fsprobe(dir: &Path) -> Result<PathBuf, Failed> {
    std::fs::create_dir_all(dir)?;
    Ok(boot_tests::husk::guest_tool(dir, "husk-fsprobe")?)
}

fn sha256(path: &Path) -> Result<String, Failed> {
    let out = Command::new("sha256sum").arg(path).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn xattr(path: &Path, name: &str) -> Option<String> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 256];
    // SAFETY: both names are NUL-terminated and `buf` is writable for its
    // whole length, which is what getxattr is told.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| String::from_utf8_lossy(&buf[..len as usize]).into_owned())
}

fn set_xattr(path: &Path, name: &str, value: &str) -> Result<(), Failed> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let n = std::ffi::CString::new(name)?;
    // SAFETY: both names are NUL-terminated; the value is `value.len()`
    // readable bytes.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(format!(
            "setxattr {name} on the host: {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    Ok(())
}

/// The extended attribute the test sets on both sides. `user.` is the
/// namespace virtiofsd can serve (it gives up CAP_SYS_ADMIN, which
/// `trusted.` needs); tmpfs has `user.` attributes only from Linux 6.6,
/// so that part of the test shares a folder of the work tree instead.
const XATTR: &str = "user.husk";
/// The big file's size: many 1 MiB FUSE writes and reads (16 of them
/// cross virtio-fs as well as 256 would; under the test bed's emulation
/// the guest's urandom and sha256sum of it are most of the test's time,
/// and the emulator's stops of the bed came most often in this test).
const BIG_MIB: u64 = 16;
/// Files in one folder: about 40 pages of READDIRPLUS (a page holds
/// about 26 entries with their attributes).
const MANY: u32 = 1000;

fn posix_both_sides() -> Result<(), Failed> {
    let share = folder("posix")?;
    let dir = share.path();
    std::fs::write(dir.join("host.txt"), "from-host\n")?;
    fsprobe(&dir.join("tools"))?;
    let attrs = tempfile::Builder::new()
        .prefix("husk-test-xattr-")
        .tempdir_in(boot_tests::workspace_root().join("target"))?;
    std::fs::write(attrs.path().join("host.txt"), "")?;
    std::fs::write(attrs.path().join("guest.txt"), "")?;
    set_xattr(&attrs.path().join("host.txt"), XATTR, "set-on-host")?;
    // The script goes in the folder: the kernel command line is too
    // short for it.
    let script = format!(
        "cd /data
cat host.txt
dd if=/dev/urandom of=big bs=1M count={BIG_MIB} 2>/dev/null && echo \"big $(sha256sum big | cut -d' ' -f1)\"
echo a > r1 && echo b > r2 && mv r1 r2 && echo renamed
ln r2 hardlink && ln -s r2 symlink && echo linked
chmod 0640 r2 && chown 1234:5678 r2 && echo owned
./tools/husk-fsprobe mmap mapped mmap-shared-write
./tools/husk-fsprobe fsync synced fsync-data
./tools/husk-fsprobe setxattr /attrs/guest.txt {XATTR} set-in-guest
./tools/husk-fsprobe getxattr /attrs/host.txt {XATTR}
mkdir many && (cd many && seq 1 {MANY} | xargs touch) && echo \"many $(ls many | wc -l)\"
"
    );
    std::fs::write(dir.join("tools/posix.sh"), script)?;
    let volume = format!("{}:/data", dir.display());
    let attrs_volume = format!("{}:/attrs", attrs.path().display());
    // A file and a folder of files over FUSE take minutes under the test
    // bed's emulation (where urandom and sha256sum in the guest are most
    // of it): a longer limit than the other boot tests'.
    std::env::set_current_dir(boot_tests::workspace_root())?;
    let r = husk_run(
        &[
            "--timeout",
            "400",
            "--memory",
            "256MiB",
            "-v",
            &volume,
            "-v",
            &attrs_volume,
            IMAGE,
            "--",
            "sh",
            "/data/tools/posix.sh",
        ],
        b"",
        Duration::from_secs(450),
    )?;
    let host_big = sha256(&dir.join("big"))?;
    expect(
        &r,
        0,
        &[
            "from-host",
            &format!("big {host_big}"),
            "renamed",
            "linked",
            "owned",
            "mmap ok",
            "fsync ok",
            "setxattr ok",
            &format!("xattr {XATTR}=set-on-host"),
            &format!("many {MANY}"),
        ],
    )?;
    let check = |ok: bool, what: &str| -> Result<(), Failed> {
        if ok {
            Ok(())
        } else {
            Err(r.explain(&format!("on the host: {what}")).into())
        }
    };
    let size = std::fs::metadata(dir.join("big"))?.len();
    check(size == BIG_MIB << 20, &format!("big is {size} bytes"))?;
    check(!dir.join("r1").exists(), "r1 was renamed away")?;
    check(
        std::fs::read_to_string(dir.join("r2"))? == "a\n",
        "r2 has r1's text",
    )?;
    let r2 = std::fs::metadata(dir.join("r2"))?;
    let hard = std::fs::metadata(dir.join("hardlink"))?;
    check(
        hard.ino() == r2.ino() && r2.nlink() == 2,
        "hardlink is r2 (2 links)",
    )?;
    check(
        std::fs::read_link(dir.join("symlink"))? == Path::new("r2"),
        "symlink points at r2",
    )?;
    check(r2.permissions().mode() & 0o7777 == 0o640, "r2 is mode 0640")?;
    check(
        r2.uid() == 1234 && r2.gid() == 5678,
        "r2 is owned by 1234:5678",
    )?;
    let mapped = std::fs::read(dir.join("mapped"))?;
    check(
        mapped.get(4096..4096 + 17) == Some(b"mmap-shared-write".as_slice()),
        "mapped holds the shared mapping's write at 4096",
    )?;
    check(
        std::fs::read_to_string(dir.join("synced"))? == "fsync-data",
        "synced holds the fsync'd text",
    )?;
    check(
        xattr(&attrs.path().join("guest.txt"), XATTR).as_deref() == Some("set-in-guest"),
        "guest.txt has the guest's xattr",
    )?;
    check(
        std::fs::read_dir(dir.join("many"))?.count() == MANY as usize,
        &format!("many has {MANY} entries"),
    )?;
    nothing_left(dir)?;
    nothing_left(attrs.path())
}

fn readonly_and_two_shares() -> Result<(), Failed> {
    let rw = folder("rw")?;
    let ro = folder("ro")?;
    // The busybox appliance runs as 1000:1000: its share is theirs; the
    // read-only one has a file it may read.
    std::os::unix::fs::chown(rw.path(), Some(1000), Some(1000))?;
    std::fs::write(ro.path().join("given"), "read-only text\n")?;
    let script = "echo mine > /rw/mine && echo wrote
cat /ro/given
echo no > /ro/new 2>&1 || echo refused
touch /rw/../etc/nope 2>/dev/null || echo not-root
id -u";
    let (rw_arg, ro_arg) = (
        format!("{}:/rw", rw.path().display()),
        format!("{}:/ro:ro", ro.path().display()),
    );
    let r = run(
        &[
            "-v",
            &rw_arg,
            "-v",
            &ro_arg,
            "examples/busybox",
            "--",
            "sh",
            "-c",
            script,
        ],
        b"",
    )?;
    expect(
        &r,
        0,
        &["wrote", "read-only text", "refused", "not-root", "1000"],
    )?;
    if !r.stdout.contains("Read-only file system") {
        return Err(r.explain("the read-only share did not answer EROFS").into());
    }
    let mine = std::fs::metadata(rw.path().join("mine"))?;
    if mine.uid() != 1000 || std::fs::read_to_string(rw.path().join("mine"))? != "mine\n" {
        return Err(r
            .explain("/rw/mine is not 1000's file with its text on the host")
            .into());
    }
    if ro.path().join("new").exists() {
        return Err(r.explain("a file appeared in the read-only folder").into());
    }
    nothing_left(rw.path())?;
    nothing_left(ro.path())
}

fn missing_folder() -> Result<(), Failed> {
    let base = folder("missing")?;
    let missing = base.path().join("not-there");
    let volume = format!("{}:/data", missing.display());
    let r = run(&["-v", &volume, IMAGE, "--", "true"], b"")?;
    if r.code != Some(1) || !r.stderr.contains("does not exist") || !r.stderr.contains("not-there")
    {
        return Err(r
            .explain("expected exit 1 naming the missing folder")
            .into());
    }
    if !r.stdout.is_empty() {
        return Err(r.explain("the guest booted anyway").into());
    }
    nothing_left(&missing)
}

fn folder_removed() -> Result<(), Failed> {
    let share = folder("removed")?;
    let victim = share.path().join("victim");
    std::fs::create_dir(&victim)?;
    std::fs::write(victim.join("file"), "before\n")?;
    let mut cmd = Command::new(boot_tests::husk::husk_bin()?);
    cmd.args(["run", "--timeout", "90", "-v"])
        .arg(format!("{}:/gone", victim.display()))
        .args([IMAGE, "--", "sh", "-c"])
        .arg(
            "cat /gone/file; echo ready; sleep 3; cat /gone/file || echo read-failed; \
             echo x > /gone/new || echo write-failed; echo still-running",
        );
    let (mut husk, before, rest) = start_until_ready(cmd)?;
    std::fs::remove_dir_all(&victim)?;
    let status = husk.wait()?;
    let after = rest.join().unwrap_or_default();
    let all = format!("{before}{after}");
    if !before.contains("before") {
        return Err(format!("the guest did not read the file first:\n{all}").into());
    }
    for want in ["read-failed", "write-failed", "still-running"] {
        if !after.lines().any(|l| l.trim() == want) {
            return Err(format!("no {want:?} after the folder went:\n{all}").into());
        }
    }
    if status.code() != Some(0) {
        return Err(format!("husk ended with {status} (the guest's shell exits 0):\n{all}").into());
    }
    nothing_left(&victim)
}

/// A minimal root in a folder: busybox and its applets, the mount points
/// init uses, a passwd.
pub(super) fn busybox_root(dir: &Path) -> Result<(), Failed> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or("no static busybox on this machine (ci/setup installs busybox-static)")?;
    for d in ["bin", "dev", "proc", "sys", "tmp", "run", "etc"] {
        std::fs::create_dir(dir.join(d))?;
    }
    std::fs::copy(busybox, dir.join("bin/busybox"))?;
    for applet in ["sh", "cat", "ls", "echo", "id", "sleep", "hostname"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    std::fs::write(dir.join("etc/marker"), "from-the-folder\n")?;
    Ok(())
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn root_from_folder() -> Result<(), Failed> {
    let root = folder("root")?;
    busybox_root(root.path())?;
    let before = tree(root.path());
    let target = format!("dir:{}", root.path().display());
    let r = run(
        &[
            "--net",
            "none",
            &target,
            "--",
            "/bin/sh",
            "-c",
            "cat /etc/marker; echo written > /from-guest; id -u; ls /",
        ],
        b"",
    )?;
    expect(&r, 0, &["from-the-folder", "0"])?;
    if std::fs::read_to_string(root.path().join("from-guest"))
        .ok()
        .as_deref()
        != Some("written\n")
    {
        return Err(r
            .explain("the guest's write did not land in the folder")
            .into());
    }
    let mut after = tree(root.path());
    after.retain(|p| p != "from-guest");
    if after != before {
        return Err(r
            .explain(&format!(
                "husk changed the folder beyond the guest's write: {before:?} -> {after:?}"
            ))
            .into());
    }
    nothing_left(root.path())
}

fn nothing_left_after_kill() -> Result<(), Failed> {
    let share = folder("kill")?;
    let mut cmd = Command::new(boot_tests::husk::husk_bin()?);
    cmd.args(["run", "--timeout", "90", "-v"])
        .arg(format!("{}:/data", share.path().display()))
        .args([
            IMAGE,
            "--",
            "sh",
            "-c",
            "echo x > /data/f; echo ready; sleep 60",
        ]);
    let (mut husk, before, rest) = start_until_ready(cmd)?;
    let (daemons, vmms): (Vec<u32>, Vec<u32>) = children(husk.id())
        .into_iter()
        .partition(|p| comm(*p) == "virtiofsd");
    // The jailed VMM (husk's other child) holds the guest RAM's memfd and
    // nothing under the shared folder: only virtiofsd reaches it.
    let held: Vec<String> = vmms
        .iter()
        .flat_map(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.display().to_string())
        .collect();
    let _ = husk.kill();
    let _ = husk.wait();
    let _ = rest.join();
    if daemons.len() != 1 {
        return Err(
            format!("husk should have started one virtiofsd, saw {daemons:?}:\n{before}").into(),
        );
    }
    if !held.iter().any(|l| l.starts_with("/memfd:husk-guest-ram")) {
        return Err(format!("the VMM {vmms:?} holds no guest RAM memfd: {held:?}").into());
    }
    let folder = share.path().to_string_lossy().into_owned();
    if held.iter().any(|l| l.starts_with(&folder)) {
        return Err(format!("the VMM holds a descriptor in the shared folder: {held:?}").into());
    }
    if !gone(daemons[0]) {
        return Err(format!("virtiofsd {} outlived kill -9 of husk", daemons[0]).into());
    }
    if !share.path().join("f").exists() {
        return Err(format!("the guest's write is not in the folder:\n{before}").into());
    }
    let sockets: Vec<_> = std::fs::read_dir(std::env::temp_dir())?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("husk-fs-"))
        .map(|e| e.path())
        .collect();
    if !sockets.is_empty() {
        return Err(format!("socket folders left: {sockets:?}").into());
    }
    nothing_left(share.path())
}

/// Mounts of the staging folder that serves single files, in `mountinfo`.
fn staged(mountinfo: &str) -> usize {
    mountinfo
        .lines()
        .filter(|l| l.contains(vmm::virtiofsd::FILES_STAGING))
        .count()
}

/// `-v FILE:PATH` as docker takes it: a read-only file the guest cannot
/// change, a read-write file both sides append to and see, a file whose
/// target (and its folder) did not exist, made inside a shared folder.
/// The files' bind mounts live only in their virtiofsd's own mount
/// namespace, so nothing of them is on the host, during or after.
fn single_files() -> Result<(), Failed> {
    let files = folder("files")?;
    let data = folder("filedata")?;
    let (conf, log, inner) = (
        files.path().join("app.conf"),
        files.path().join("app.log"),
        files.path().join("inner"),
    );
    std::fs::write(&conf, "setting=1\n")?;
    std::fs::write(&log, "")?;
    std::fs::write(&inner, "inner text\n")?;
    let script = "cat /etc/app.conf
echo changed > /etc/app.conf || echo refused
echo from-guest >> /var/log/app.log && echo appended
cat /data/sub/inner
echo ready
i=0
while [ $i -lt 300 ]; do
  if grep -q host-wrote /var/log/app.log; then echo saw-host; touch /data/done; break; fi
  sleep 0.1; i=$((i+1))
done
sleep 60";
    let mut cmd = Command::new(boot_tests::husk::husk_bin()?);
    cmd.args(["run", "--timeout", "120"])
        .arg("-v")
        .arg(format!("{}:/data", data.path().display()))
        .arg("-v")
        .arg(format!("{}:/etc/app.conf:ro", conf.display()))
        .arg("-v")
        .arg(format!("{}:/var/log/app.log", log.display()))
        .arg("-v")
        .arg(format!("{}:/data/sub/inner", inner.display()))
        .args([IMAGE, "--", "sh", "-c", script]);
    let (mut husk, before, rest) = start_until_ready(cmd)?;
    let daemons: Vec<u32> = children(husk.id())
        .into_iter()
        .filter(|p| comm(*p) == "virtiofsd")
        .collect();
    // virtiofsd forks into its sandbox: husk's own child is the one whose
    // mount namespace husk made.
    let serving_files: Vec<u32> = virtiofsd_serving(Path::new(vmm::virtiofsd::FILES_STAGING))
        .into_iter()
        .filter(|p| daemons.contains(p))
        .collect();
    let theirs = serving_files
        .first()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default())
        .unwrap_or_default();
    let ours = std::fs::read_to_string("/proc/self/mountinfo")?;
    {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)?
            .write_all(b"host-wrote\n")?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !data.path().join("done").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = husk.kill();
    let _ = husk.wait();
    let after = rest.join().unwrap_or_default();
    let seen = format!("{before}{after}");
    let fail = |why: &str| -> Result<(), Failed> {
        Err(format!("{why}; the guest printed:\n{seen}").into())
    };
    for want in ["setting=1", "refused", "appended", "inner text", "saw-host"] {
        if !seen.contains(want) {
            return fail(&format!("no {want:?}"));
        }
    }
    if daemons.len() != 2 || serving_files.len() != 1 {
        return fail(&format!(
            "want two virtiofsd (the folder, the files), saw {daemons:?}, {serving_files:?} for the files"
        ));
    }
    // virtiofsd has pivoted into the staging tmpfs: its files are /0, /1
    // and /2 there, bind mounts of the host files, the first read-only.
    let bound = ["/app.conf /0 ro,", "/app.log /1 rw,", "/inner /2 rw,"];
    if !bound.iter().all(|b| theirs.contains(b)) {
        return fail(&format!(
            "the files' virtiofsd does not hold the three bind mounts {bound:?}:\n{theirs}"
        ));
    }
    if staged(&ours) != 0 {
        return fail(&format!(
            "the staged files are mounted on the host:\n{ours}"
        ));
    }
    if std::fs::read_to_string(&conf)? != "setting=1\n" {
        return fail("the read-only file changed");
    }
    if std::fs::read_to_string(&log)? != "from-guest\nhost-wrote\n" {
        return fail(&format!(
            "app.log on the host is {:?}",
            std::fs::read_to_string(&log)?
        ));
    }
    if !data.path().join("sub/inner").is_file() {
        return fail("the target made inside the shared folder is not on the host");
    }
    for pid in &daemons {
        if !gone(*pid) {
            return fail(&format!("virtiofsd {pid} outlived kill -9 of husk"));
        }
    }
    if staged(&std::fs::read_to_string("/proc/self/mountinfo")?) != 0 {
        return fail("staged files are mounted on the host after the run");
    }
    let left: Vec<_> = std::fs::read_dir(vmm::virtiofsd::FILES_STAGING)?
        .flatten()
        .map(|e| e.path())
        .collect();
    if !left.is_empty() {
        return fail(&format!("left in the staging folder: {left:?}"));
    }
    nothing_left(data.path())
}

/// A file shared onto a path that the image has as a link to nothing (as
/// systemd images have /etc/resolv.conf): what the link names is made and
/// the file seen through the link, as runc does.
fn file_onto_dangling_link() -> Result<(), Failed> {
    let root = folder("linkroot")?;
    busybox_root(root.path())?;
    std::os::unix::fs::symlink(
        "../var/lib/resolve/stub-resolv.conf",
        root.path().join("etc/resolv.conf"),
    )?;
    let files = folder("linkfile")?;
    let conf = files.path().join("resolv.conf");
    std::fs::write(&conf, "nameserver 192.0.2.53\n")?;
    let volume = format!("{}:/etc/resolv.conf:ro", conf.display());
    let target = format!("dir:{}", root.path().display());
    let r = run(
        &[
            "--net",
            "none",
            "-v",
            &volume,
            &target,
            "--",
            "/bin/sh",
            "-c",
            "cat /etc/resolv.conf; readlink /etc/resolv.conf",
        ],
        b"",
    )?;
    expect(
        &r,
        0,
        &[
            "nameserver 192.0.2.53",
            "../var/lib/resolve/stub-resolv.conf",
        ],
    )?;
    if !root
        .path()
        .join("var/lib/resolve/stub-resolv.conf")
        .is_file()
    {
        return Err(r.explain("the link's target was not made").into());
    }
    nothing_left(root.path())?;
    nothing_left(files.path())?;
    file_refused_without_root(&conf)
}

/// Another user may not bind-mount: husk says so before anything starts.
fn file_refused_without_root(file: &Path) -> Result<(), Failed> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
    let root = dir.path().join("root");
    std::fs::create_dir(&root)?;
    busybox_root(&root)?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644))?;
    for d in file.ancestors().skip(1) {
        let mode = std::fs::metadata(d)?.permissions().mode();
        if mode & 0o005 != 0o005 {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o005))?;
        }
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(boot_tests::husk::husk_bin()?)
        .args(["run", "--net", "none", "-v"])
        .arg(format!("{}:/etc/app.conf", file.display()))
        .arg(format!("dir:{}", root.display()))
        .args(["--", "true"])
        .env("HOME", dir.path())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(1) || !err.contains("sharing single files needs root") {
        return Err(format!(
            "a file shared by nobody: status {:?}, stderr {err}",
            out.status.code()
        )
        .into());
    }
    Ok(())
}
