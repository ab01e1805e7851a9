//! Named volumes (`-v NAME:/path`, `husk volume`): made on first use,
//! filled from the image when new, kept across runs, held by the runs and
//! appliances that use them, removed whole. The volumes live under
//! `$HUSK_DATA_DIR` on the test's tmpfs (the bed's own root is read-only).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;

use boot_tests::husk::HuskRun;
use libtest_mimic::{Failed, Trial};

use super::detached::{h, ok, tree, Vm};
use super::network::{gone, start_until_ready};
use super::shares::{folder, virtiofsd_serving};
use super::{expect, run};

/// The busybox appliance: its /etc has a motd of its own, its /data is
/// 1000:1000 and 0750, and its commands run as user 1000 in /data.
const IMAGE: &str = "examples/busybox";

pub fn trials() -> Vec<Trial> {
    vec![boot_tests::trial(
        "volumes_named_and_anonymous_are_made_filled_from_the_image_kept_held_and_removed",
        volumes,
    )]
}

fn volumes() -> Result<(), Failed> {
    let home = folder("volumes")?;
    // Every husk this test starts (and only this test uses volumes).
    std::env::set_var("HUSK_DATA_DIR", home.path());
    let root = home.path().join("volumes");
    let result = volumes_in(&root).and_then(|()| anonymous_in(&root));
    std::env::remove_var("HUSK_DATA_DIR");
    result
}

/// The volumes in `root` (their folders, and any being made or removed)
/// once they are `wanted` many, or after 10 s.
fn volumes_settled(root: &std::path::Path, wanted: usize) -> Vec<String> {
    let list = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while list().len() != wanted && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    list()
}

/// Anonymous volumes: an image's VOLUMEs (`VOLUMES_IMAGE`'s /home and
/// /var/lib/app) and `-v /PATH` get volumes of
/// their own, filled from the image; a foreground run's go when it ends,
/// `kill -9` of it included; a detached appliance keeps its own across a
/// stop and start, and `husk rm -v` removes them, as does the end of a
/// `--rm` one.
fn anonymous_in(root: &std::path::Path) -> Result<(), Failed> {
    let image = boot_tests::husk::VOLUMES_IMAGE;
    let listing = "ls /home; grep -c ' virtiofs ' /proc/mounts; \
                   touch /var/lib/app/x /scratch/x && echo wrote; \
                   touch /bound/x 2>/dev/null || echo bound read-only; ls /bound; \
                   grep ' /fast ' /proc/mounts | grep -o 'size=1024k'";

    // A foreground run: three volumes (the image's two, -v /scratch), /home
    // filled from the image (its user's folder); all gone once the run is.
    // Beside them, docker's --mount forms of a read-only bind mount and
    // of a tmpfs.
    let bound = folder("bound")?;
    std::fs::write(bound.path().join("seen"), "")?;
    let bind = format!(
        "type=bind,source={},target=/bound,readonly",
        bound.path().display()
    );
    let r = run(
        &[
            "-v",
            "/scratch",
            "--mount",
            &bind,
            "--mount",
            "type=tmpfs,destination=/fast,tmpfs-size=1m",
            image,
            "--",
            "sh",
            "-c",
            listing,
        ],
        b"",
    )?;
    expect(
        &r,
        0,
        &[
            "user",
            "4",
            "wrote",
            "bound read-only",
            "seen",
            "size=1024k",
        ],
    )?;
    let left = volumes_settled(root, 0);
    if !left.is_empty() {
        return Err(r
            .explain(&format!("a foreground run's volumes stayed: {left:?}"))
            .into());
    }

    // Killed with -9: its reaper removes them all the same.
    let mut cmd = Command::new(boot_tests::husk::husk_bin()?);
    cmd.args(["run", "--timeout", "90", image, "--"])
        .args(["sh", "-c", "echo ready; sleep 60"]);
    let (mut husk, before, rest) = start_until_ready(cmd)?;
    let made = volumes_settled(root, 2);
    let pid = husk.id();
    let _ = husk.kill();
    let _ = husk.wait();
    let _ = rest.join();
    if made.len() != 2 {
        return Err(format!("the image's two volumes are not made: {made:?}; {before}").into());
    }
    let daemons: Vec<u32> = made
        .iter()
        .flat_map(|v| virtiofsd_serving(&root.join(v).join("_data")))
        .collect();
    let left = volumes_settled(root, 0);
    if !gone(pid) || daemons.iter().any(|p| !gone(*p)) || !left.is_empty() {
        return Err(format!(
            "after kill -9 of husk {pid}: its virtiofsd {daemons:?}, volumes left {left:?}"
        )
        .into());
    }

    // A detached appliance keeps its volumes across a stop and a start.
    let vm = Vm::start("anon", &[image, "--", "sleep", "600"])?;
    ok(
        vm.exec(&["sh", "-c", "echo kept > /var/lib/app/f"])?,
        "write into a volume",
    )?;
    let made = volumes_settled(root, 2);
    ok(h(&["stop", "anon"])?, "husk stop")?;
    ok(h(&["start", "anon"])?, "husk start")?;
    let again = ok(vm.exec(&["cat", "/var/lib/app/f"])?, "read it back")?;
    if again.stdout != "kept\n" || volumes_settled(root, 2) != made {
        return Err(again
            .explain(&format!("the same volumes {made:?} after a start"))
            .into());
    }
    // docker's backup pattern: another run mounts what it has, here
    // read-only, and makes no volume of its own for the image's VOLUMEs.
    let backup = h(&[
        "run",
        "--volumes-from",
        "anon:ro",
        image,
        "--",
        "sh",
        "-c",
        "cat /var/lib/app/f; touch /var/lib/app/g 2>/dev/null || echo read-only",
    ])?;
    // The console's lines (a terminal's: they may end in \r\n).
    let said: Vec<&str> = backup.stdout.lines().map(str::trim_end).collect();
    let now = volumes_settled(root, 2);
    if backup.code != Some(0) || !said.windows(2).any(|w| w == ["kept", "read-only"]) || now != made
    {
        return Err(backup
            .explain(&format!(
                "--volumes-from anon:ro should read anon's volumes {made:?}, read-only \
                 (the volumes after it: {now:?})"
            ))
            .into());
    }
    let keeper = vm.keeper()?;
    let everything = tree(keeper);
    std::mem::forget(vm);
    ok(h(&["rm", "-f", "-v", "anon"])?, "husk rm -f -v")?;
    let left = volumes_settled(root, 0);
    if everything.iter().any(|p| !gone(*p)) || !left.is_empty() {
        return Err(format!("after husk rm -f -v: volumes left {left:?}").into());
    }

    // --rm: its volumes go when it ends.
    let once = h(&["run", "-d", "--rm", "--name", "once", image, "--", "true"])?;
    ok(once, "husk run -d --rm")?;
    let left = volumes_settled(root, 0);
    if !left.is_empty() {
        return Err(format!("an --rm appliance's volumes stayed: {left:?}").into());
    }
    Ok(())
}

fn volumes_in(root: &std::path::Path) -> Result<(), Failed> {
    let data = |volume: &str| root.join(volume).join("_data");
    // First use: made, and filled from what the image holds there; the
    // command runs as the appliance's user 1000, in /data, which the
    // image gives to that user (mode 0750): the volume's root takes both.
    let r = run(
        &[
            "-v",
            "husk-conf:/etc",
            "-v",
            "husk-data:/data",
            "-v",
            "husk-bare:/usr:nocopy",
            IMAGE,
            "--",
            "sh",
            "-c",
            "cat /etc/motd; echo kept > note; ls -A /usr | wc -l; id -u",
        ],
        b"",
    )?;
    expect(&r, 0, &["Welcome to a husk appliance.", "0", "1000"])?;
    let motd = data("husk-conf").join("motd");
    if std::fs::read_to_string(&motd)? != "Welcome to a husk appliance.\n"
        || std::fs::metadata(&motd)?.permissions().mode() & 0o7777 != 0o644
    {
        return Err(r
            .explain("the image's /etc/motd is not in the new volume as it was")
            .into());
    }
    let root_of_data = std::fs::metadata(data("husk-data"))?;
    if root_of_data.mode() & 0o7777 != 0o750
        || (root_of_data.uid(), root_of_data.gid()) != (1000, 1000)
    {
        return Err(format!(
            "the volume's root should take /data's owner and mode (1000:1000, 0750): {}:{} {:o}",
            root_of_data.uid(),
            root_of_data.gid(),
            root_of_data.mode() & 0o7777
        )
        .into());
    }
    let note = data("husk-data").join("note");
    if std::fs::read_to_string(&note)? != "kept\n" || std::fs::metadata(&note)?.uid() != 1000 {
        return Err("the guest's write is not in the volume, as its user's".into());
    }
    if std::fs::read_dir(data("husk-bare"))?.next().is_some() {
        return Err("a :nocopy volume was filled from the image".into());
    }

    // A volume is filled once: its own files are what later runs see.
    std::fs::write(&motd, "changed\n")?;
    let r = run(
        &[
            "-v",
            "husk-conf:/etc:ro",
            "-v",
            "husk-data:/data",
            IMAGE,
            "--",
            "sh",
            "-c",
            "cat /etc/motd; cat note; touch /etc/x || echo read-only",
        ],
        b"",
    )?;
    expect(&r, 0, &["changed", "kept", "read-only"])?;

    // A detached appliance that names a volume keeps it, running or not,
    // until it is removed; prune takes only what nothing uses.
    let vm = Vm::start(
        "vols",
        &["-v", "husk-data:/data", IMAGE, "--", "sleep", "600"],
    )?;
    let keeper = vm.keeper()?;
    let ls = ok(h(&["volume", "ls"])?, "husk volume ls")?;
    if !ls
        .stdout
        .lines()
        .any(|l| l.starts_with("husk-data ") && l.trim_end().ends_with("vols"))
    {
        return Err(ls
            .explain("husk volume ls should say vols uses husk-data")
            .into());
    }
    refused(h(&["volume", "rm", "husk-data"])?, "in use by vols")?;
    let pruned = ok(h(&["volume", "prune", "-f"])?, "husk volume prune -f")?;
    let mut gone_names: Vec<&str> = pruned.stdout.lines().collect();
    gone_names.sort();
    if gone_names != ["husk-bare", "husk-conf"] {
        return Err(pruned
            .explain("prune should remove husk-bare and husk-conf alone")
            .into());
    }
    let inspect = ok(
        h(&["volume", "inspect", "husk-data"])?,
        "husk volume inspect",
    )?;
    let shown: serde_json::Value = serde_json::from_str(&inspect.stdout)?;
    if shown[0]["Mountpoint"] != serde_json::json!(data("husk-data"))
        || shown[0]["UsedBy"][0] != "vols"
    {
        return Err(inspect
            .explain("inspect should give the folder and the user")
            .into());
    }
    vm.remove(&tree(keeper))?;
    ok(
        h(&["volume", "rm", "husk-data"])?,
        "husk volume rm of a volume no one uses",
    )?;

    // A foreground run holds its volume while it runs, also against a
    // volume nothing names; kill -9 of husk lets it go, leaving nothing.
    let mut cmd = Command::new(boot_tests::husk::husk_bin()?);
    cmd.args([
        "run",
        "--timeout",
        "90",
        "-v",
        "husk-held:/srv",
        IMAGE,
        "--",
    ])
    .args(["sh", "-c", "echo ready; sleep 60"]);
    let (mut husk, before, rest) = start_until_ready(cmd)?;
    let held = h(&["volume", "rm", "husk-held"])?;
    let pid = husk.id();
    let _ = husk.kill();
    let _ = husk.wait();
    let _ = rest.join();
    if held.code == Some(0) || !held.stderr.contains("in use by a running appliance") {
        return Err(held
            .explain(&format!(
                "a held volume was not refused; the guest said:\n{before}"
            ))
            .into());
    }
    let daemons = virtiofsd_serving(&data("husk-held"));
    if !gone(pid) || daemons.iter().any(|p| !gone(*p)) {
        return Err(format!("husk {pid} or its virtiofsd {daemons:?} outlived kill -9").into());
    }
    ok(
        h(&["volume", "rm", "husk-held"])?,
        "husk volume rm after kill -9 of its run",
    )?;
    let left: Vec<PathBuf> = std::fs::read_dir(root)?
        .flatten()
        .map(|e| e.path())
        .collect();
    if !left.is_empty() {
        return Err(format!("left in the volumes' folder: {left:?}").into());
    }
    Ok(())
}

/// A husk command that failed, saying `why`.
pub(super) fn refused(r: HuskRun, why: &str) -> Result<(), Failed> {
    if r.code == Some(0) || !r.stderr.contains(why) {
        return Err(r.explain(&format!("should fail with {why:?}")).into());
    }
    Ok(())
}
