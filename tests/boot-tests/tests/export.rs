//! `husk export`: every format read back by `qemu-img`, the OVA's layout
//! and manifest, reproducible bytes, the errors a user can act on, nothing
//! left behind, and the exported disks booting under QEMU's standard PC
//! (q35) with UEFI firmware (OVMF) from virtio-blk, AHCI and NVMe.
//!
//! No KVM is needed: the boots run QEMU's TCG on this host, about 7 s
//! each. (In the KVM test bed, OVMF under nested KVM aborted the bed's own
//! QEMU 10.0 in `tcg_handle_interrupt`.)
//!
//! They need the portable kernel (`husk kernel build --flavor portable`,
//! which ci/setup runs), qemu-utils, dosfstools, mtools, fdisk, binutils,
//! systemd-boot-efi and ovmf; a missing one fails the test and says so.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use boot_tests::husk::husk_bin;
use boot_tests::workspace_root;

/// One folder per test with an appliance file on the busybox example's
/// OCI image; `command` is its run.command as TOML.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(extra: &str) -> Fixture {
        Fixture::running("echo exported-ok on $(hostname) $(uname -r); exit 3", extra)
    }

    /// The appliance runs `script` with busybox's shell.
    fn running(script: &str, extra: &str) -> Fixture {
        prepare_examples();
        let dir = tempfile::tempdir().expect("a temporary folder");
        let image = workspace_root().join("examples/busybox/image");
        let text = format!(
            "[appliance]\nname = \"web\"\nversion = \"1.2.3\"\n\
             description = \"An exported busybox\"\n\
             [rootfs]\nfrom = \"oci:{}:latest\"\n\
             [run]\ncommand = [\"/bin/sh\", \"-c\", {script:?}]\n\
             [vm]\ncpus = 2\nmemory = \"256MiB\"\n{extra}",
            image.display()
        );
        fs::write(dir.path().join("appliance.toml"), text).unwrap();
        Fixture { dir }
    }

    fn appliance(&self) -> PathBuf {
        self.dir.path().join("appliance.toml")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `husk export APPLIANCE --format F -o NAME`; panics with husk's
    /// stderr when it fails.
    fn export(&self, format: &str, name: &str) -> PathBuf {
        let out = self.path(name);
        let o = self.try_export(format, &out, &[]);
        assert!(
            o.status.success(),
            "husk export --format {format} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let printed = String::from_utf8_lossy(&o.stdout);
        assert_eq!(Path::new(printed.trim()), out);
        out
    }

    fn try_export(&self, format: &str, out: &Path, env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(husk_bin().unwrap());
        cmd.arg("export")
            .arg(self.appliance())
            .args(["--format", format, "-o"])
            .arg(out)
            .envs(env.iter().copied());
        cmd.output().expect("husk runs")
    }
}

fn prepare_examples() {
    let status = Command::new(workspace_root().join("examples/prepare"))
        .status()
        .expect("examples/prepare runs");
    assert!(status.success(), "examples/prepare failed");
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed; run ci/setup");
}

fn qemu_img(args: &[&str]) -> Output {
    Command::new(tool("qemu-img"))
        .args(args)
        .output()
        .expect("qemu-img runs")
}

/// `qemu-img info` as `format` (a fixed VHD has only a footer, which
/// qemu-img does not probe for: it must be told).
fn info(path: &Path, format: &str) -> serde_json::Value {
    let o = qemu_img(&[
        "info",
        "--output=json",
        "-f",
        format,
        path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "qemu-img info {}", path.display());
    serde_json::from_slice(&o.stdout).unwrap()
}

fn sha256(path: &Path) -> String {
    let digest = builder::oci::file_digest(path).unwrap();
    digest.trim_start_matches("sha256:").to_string()
}

/// The folder holds exactly `names` (no work folder, no temporary file).
fn holds_only(dir: &Path, names: &[&str]) {
    let mut have: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    have.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(have, want, "what {} holds", dir.display());
}

#[test]
fn every_format_reads_back_with_the_raw_disk_contents() {
    let f = Fixture::new("");
    let raw = f.export("raw", "web.raw");
    let size = fs::metadata(&raw).unwrap().len();
    assert_eq!(size % (1 << 20), 0, "a whole number of MiB (Azure's rule)");
    // The partition table: an EFI system partition and the root.
    let o = Command::new(tool("sfdisk"))
        .args(["--json"])
        .arg(&raw)
        .output()
        .unwrap();
    let table: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(table["partitiontable"]["label"], "gpt");
    assert_eq!(parts.len(), 2, "{table}");
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[1]["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    assert_eq!(parts[0]["start"], 2048);

    for (format, file, qemu_format) in [
        ("qcow2", "web.qcow2", "qcow2"),
        ("vmdk", "web.vmdk", "vmdk"),
        ("vhd", "web.vhd", "vpc"),
        ("vhdx", "web.vhdx", "vhdx"),
    ] {
        let out = f.export(format, file);
        let i = info(&out, qemu_format);
        assert_eq!(i["format"], qemu_format, "{format}: {i}");
        assert_eq!(i["virtual-size"], size, "{format}: {i}");
        let o = qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            qemu_format,
            raw.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "{format}: qemu-img compare: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // A fixed VHD: the data, then the 512-byte footer with its cookie.
    let vhd = fs::read(f.path("web.vhd")).unwrap();
    assert_eq!(vhd.len() as u64, size + 512);
    assert_eq!(&vhd[vhd.len() - 512..][..8], b"conectix");
    // A dynamic VHDX and a sparse VMDK, as the formats were asked for.
    assert_eq!(
        info(&f.path("web.vmdk"), "vmdk")["format-specific"]["data"]["create-type"],
        "monolithicSparse"
    );
    assert!(
        fs::metadata(f.path("web.vhdx")).unwrap().len() < size,
        "a dynamic VHDX holds only what is written"
    );

    // Compute Engine's tarball: disk.raw alone, the raw disk's bytes.
    let gce = f.export("gce", "web.tar.gz");
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(fs::File::open(&gce).unwrap()));
    let mut names = Vec::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        names.push(entry.path().unwrap().to_string_lossy().into_owned());
        let mut hasher = sha2::Sha256::default();
        std::io::copy(&mut entry, &mut hasher).unwrap();
        let hex: String = sha2::Digest::finalize(hasher)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, sha256(&raw), "disk.raw's bytes");
    }
    assert_eq!(names, ["disk.raw"]);
    holds_only(
        f.dir.path(),
        &[
            "appliance.toml",
            "web.raw",
            "web.qcow2",
            "web.vmdk",
            "web.vhd",
            "web.vhdx",
            "web.tar.gz",
        ],
    );
}

#[test]
fn ova_holds_descriptor_manifest_and_disk_in_order_and_they_verify() {
    let f = Fixture::new("");
    let ova = f.export("ova", "web.ova");
    let raw = f.export("raw", "web.raw");
    let unpacked = f.path("unpacked");
    fs::create_dir(&unpacked).unwrap();
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(fs::File::open(&ova).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        assert!(entry.header().as_ustar().is_some(), "OVA members are ustar");
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        entry.unpack(unpacked.join(&name)).unwrap();
        names.push(name);
    }
    assert_eq!(names, ["web.ovf", "web.mf", "web-disk1.vmdk"]);

    // Every manifest line names a member and its digest verifies.
    let mf = fs::read_to_string(unpacked.join("web.mf")).unwrap();
    let lines: Vec<&str> = mf.lines().collect();
    assert_eq!(lines.len(), 2, "{mf}");
    for line in lines {
        let (name, digest) = line
            .strip_prefix("SHA256(")
            .and_then(|l| l.split_once(")= "))
            .unwrap_or_else(|| panic!("manifest line {line:?}"));
        assert_eq!(sha256(&unpacked.join(name)), digest, "{name}");
    }

    // The descriptor: XML with the appliance's values.
    let text = fs::read_to_string(unpacked.join("web.ovf")).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the OVF descriptor is XML");
    let find = |name: &str| {
        doc.descendants()
            .filter(|n| n.tag_name().name() == name)
            .filter_map(|n| n.text())
            .collect::<Vec<_>>()
    };
    assert_eq!(find("Product"), ["web"]);
    assert_eq!(find("Version"), ["1.2.3"]);
    assert_eq!(find("Annotation"), ["An exported busybox"]);
    assert!(find("VirtualQuantity").contains(&"2"), "2 vCPUs");
    assert!(find("VirtualQuantity").contains(&"256"), "256 MiB");
    let file = doc
        .descendants()
        .find(|n| n.tag_name().name() == "File")
        .unwrap();
    let vmdk = unpacked.join("web-disk1.vmdk");
    let vmdk_size = fs::metadata(&vmdk).unwrap().len().to_string();
    assert_eq!(
        file.attributes()
            .find(|a| a.name() == "size")
            .map(|a| a.value()),
        Some(vmdk_size.as_str())
    );
    let disk = doc
        .descendants()
        .find(|n| n.tag_name().name() == "Disk")
        .unwrap();
    let capacity = fs::metadata(&raw).unwrap().len().to_string();
    assert_eq!(
        disk.attributes()
            .find(|a| a.name() == "capacity")
            .map(|a| a.value()),
        Some(capacity.as_str())
    );

    // The disk is a stream-optimized VMDK with the raw disk's contents.
    let i = info(&vmdk, "vmdk");
    assert_eq!(i["format"], "vmdk");
    assert_eq!(
        i["format-specific"]["data"]["create-type"],
        "streamOptimized"
    );
    let o = qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "vmdk",
        raw.to_str().unwrap(),
        vmdk.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn two_exports_give_the_same_bytes() {
    let f = Fixture::new("");
    for (format, a, b) in [
        ("raw", "one.raw", "two.raw"),
        ("qcow2", "one.qcow2", "two.qcow2"),
    ] {
        let one = f.export(format, a);
        // A second apart: no time stamp may leak into the bytes.
        std::thread::sleep(Duration::from_millis(1100));
        let two = f.export(format, b);
        assert_eq!(sha256(&one), sha256(&two), "{format}");
    }
}

#[test]
fn clear_errors_and_nothing_left_behind() {
    // A host share: refused by name before anything is built.
    let share = tempfile::tempdir().unwrap();
    let f = Fixture::new(&format!(
        "[[vm.shares]]\nhost = \"{}\"\nguest = \"/data\"\n",
        share.path().display()
    ));
    let o = f.try_export("qcow2", &f.path("x.qcow2"), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("vm.shares"), "{err}");
    holds_only(f.dir.path(), &["appliance.toml"]);

    // qemu-img missing: the package to install is named.
    let f = Fixture::new("");
    let bin = f.path("bin");
    fs::create_dir(&bin).unwrap();
    for t in ["sfdisk", "mkfs.vfat", "mcopy", "objcopy"] {
        std::os::unix::fs::symlink(tool(t), bin.join(t)).unwrap();
    }
    let o = f.try_export(
        "qcow2",
        &f.path("x.qcow2"),
        &[("PATH", bin.to_str().unwrap())],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("qemu-img") && err.contains("apt-get install qemu-utils"),
        "{err}"
    );
    fs::remove_dir_all(&bin).unwrap();
    holds_only(f.dir.path(), &["appliance.toml"]);

    // A file system too small: refused with the figures, nothing written.
    let small = f.path("small");
    fs::create_dir(&small).unwrap();
    let mount = SmallMount::new(&small);
    let o = f.try_export("raw", &small.join("x.raw"), &[]);
    let listing: Vec<_> = fs::read_dir(&small).unwrap().collect();
    drop(mount);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("not enough free space"), "{err}");
    assert!(listing.is_empty(), "{listing:?}");

    // Killed mid-export: the next export removes the dead one's work
    // folder, and only the output is left.
    let out = f.path("k.qcow2");
    let mut child = Command::new(husk_bin().unwrap())
        .arg("export")
        .arg(f.appliance())
        .args(["--format", "qcow2", "-o"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let work_prefix = ".k.qcow2.husk-export-";
    while !fs::read_dir(f.dir.path()).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(work_prefix)
    }) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no work folder appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    f.export("qcow2", "k.qcow2");
    holds_only(f.dir.path(), &["appliance.toml", "small", "k.qcow2"]);
}

/// An 8 MiB tmpfs on a folder, unmounted when dropped (also when the test
/// fails).
struct SmallMount(PathBuf);

impl SmallMount {
    fn new(dir: &Path) -> SmallMount {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "husk-export-test"])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(mounted.success(), "mounting a small tmpfs needs root");
        SmallMount(dir.to_path_buf())
    }
}

impl Drop for SmallMount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.0).status();
        if !std::thread::panicking() {
            assert!(
                unmounted.is_ok_and(|s| s.success()),
                "umount {}",
                self.0.display()
            );
        }
    }
}

/// Boots `disk` under QEMU q35 with OVMF, the disk on `controller`;
/// returns the serial console once the machine has powered itself off.
fn boot_ovmf(disk: &Path, format: &str, controller: &str, dir: &Path) -> String {
    let machine = Machine::start(disk, format, controller, dir, &[]);
    machine.wait_powered_off()
}

/// A q35 machine with OVMF booting an exported disk, killed if dropped
/// still running (a failing test leaves no QEMU).
struct Machine {
    child: std::process::Child,
    console: PathBuf,
    what: String,
    started: Instant,
}

impl Machine {
    /// `extra`: more QEMU arguments (network cards).
    fn start(disk: &Path, format: &str, controller: &str, dir: &Path, extra: &[String]) -> Machine {
        let vars = dir.join(format!("vars-{format}-{controller}.fd"));
        let console = dir.join(format!("console-{format}-{controller}.log"));
        let device = match controller {
            "virtio" => "virtio-blk-pci,drive=d0",
            // q35's own AHCI controller (what VMware and VirtualBox call SATA).
            "ahci" => "ide-hd,drive=d0,bus=ide.0",
            "nvme" => "nvme,drive=d0,serial=husk0",
            other => panic!("controller {other}"),
        };
        let mut qemu = boot_tests::qemu::q35(disk, format, device, &console, Some(&vars))
            .unwrap_or_else(|e| panic!("{e}"));
        qemu.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Machine {
            child: qemu.spawn().expect("qemu-system-x86_64 runs"),
            console,
            what: format!("{format} on {controller}"),
            started: Instant::now(),
        }
    }

    fn console(&self) -> String {
        fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The serial console once the machine has powered itself off.
    fn wait_powered_off(mut self) -> String {
        let limit = Duration::from_secs(300);
        let what = self.what.clone();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if self.started.elapsed() > limit {
                panic!(
                    "{what}: the machine did not power off within {limit:?}; console:\n{}",
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let text = self.console();
        assert!(status.success(), "{what}: qemu {status}: {stderr}\n{text}");
        eprintln!(
            "{what}: powered off after {:.1} s",
            self.started.elapsed().as_secs_f64()
        );
        text
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn assert_ran(console: &str, what: &str) {
    assert!(
        console.contains("exported-ok on web"),
        "{what}: the appliance's output is not on the console:\n{console}"
    );
    assert!(
        console.contains("husk-init: the command exited with status 3; powering off"),
        "{what}: init did not report the status:\n{console}"
    );
}

#[test]
fn exported_disks_boot_under_q35_with_ovmf_from_virtio_ahci_and_nvme() {
    let f = Fixture::new("");
    let dir = f.dir.path();
    let qcow2 = f.export("qcow2", "web.qcow2");
    for controller in ["virtio", "ahci", "nvme"] {
        let console = boot_ovmf(&qcow2, "qcow2", controller, dir);
        assert_ran(&console, &format!("qcow2 on {controller}"));
    }
    for (format, qemu_format) in [
        ("vmdk", "vmdk"),
        ("vhd", "vpc"),
        ("vhdx", "vhdx"),
        ("raw", "raw"),
    ] {
        let disk = f.export(format, &format!("web.{format}"));
        let console = boot_ovmf(&disk, qemu_format, "virtio", dir);
        assert_ran(&console, &format!("{format} on virtio"));
    }
    // The OVA's own disk (stream-optimized), on the SCSI-less AHCI path
    // an importer without LSI Logic would pick.
    let ova = f.export("ova", "web.ova");
    let mut archive = tar::Archive::new(fs::File::open(&ova).unwrap());
    let vmdk = dir.join("from-ova.vmdk");
    let mut found = false;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy().ends_with(".vmdk") {
            entry.unpack(&vmdk).unwrap();
            found = true;
        }
    }
    assert!(found, "no VMDK in the OVA");
    let console = boot_ovmf(&vmdk, "vmdk", "ahci", dir);
    assert_ran(&console, "the OVA's VMDK on AHCI");
}

#[test]
fn an_initramfs_appliance_boots_and_restart_is_honoured() {
    // The hello example is an initramfs: the image rides in the unified
    // kernel image and the disk has only its EFI partition.
    prepare_examples();
    let dir = tempfile::tempdir().unwrap();
    let hello = workspace_root().join("examples/hello");
    let out = dir.path().join("hello.qcow2");
    let o = Command::new(husk_bin().unwrap())
        .arg("export")
        .arg(&hello)
        .args(["--format", "qcow2", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let console = boot_ovmf(&out, "qcow2", "virtio", dir.path());
    assert!(console.contains("Hello"), "{console}");
    assert!(
        console.contains("husk-init: the command exited with status 0; powering off"),
        "{console}"
    );

    // on_exit = "restart": init reboots (QEMU's -no-reboot ends it).
    let f = Fixture::new("");
    let text = fs::read_to_string(f.appliance())
        .unwrap()
        .replace("[vm]", "on_exit = \"restart\"\n[vm]");
    fs::write(f.appliance(), text).unwrap();
    let disk = f.export("qcow2", "svc.qcow2");
    let console = boot_ovmf(&disk, "qcow2", "virtio", f.dir.path());
    assert!(
        console.contains("husk-init: the command exited with status 3; restarting"),
        "{console}"
    );
}

/// A free TCP port on the host's loopback (bound and let go: QEMU takes it
/// next).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// An HTTP GET of `/` on the host's loopback `port`: the body, or why not.
fn http_get(port: u16) -> Result<String, String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(format!("no body: {text:?}"))?;
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        return Err(format!("not a 200: {head:?}"));
    }
    Ok(body.to_string())
}

#[test]
fn an_exported_appliance_takes_each_cards_network_from_dhcp_and_serves_on_it() {
    // What the guest fetches from the host: on QEMU's user network the
    // gateway, 10.0.2.2, is the host's loopback.
    let token = format!("dhcp-token-{}", std::process::id());
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = server.local_addr().unwrap().port();
    let served = token.clone();
    std::thread::spawn(move || {
        use std::io::Write;
        for stream in server.incoming().flatten().take(4) {
            let mut s = stream;
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{served}",
                served.len()
            );
        }
    });
    // The appliance reports its network, fetches from the host, serves a
    // page, and ends when the test connects to port 9000, saying what
    // IPv6 it has by then.
    let script = format!(
        "ip -4 -o addr; ip route; cat /etc/resolv.conf /etc/hosts; \
         echo fetched: $(wget -q -O - http://10.0.2.2:{host_port}/); \
         echo guest-page > /tmp/index.html; httpd -p 8080 -h /tmp; \
         echo serving; nc -l -p 9000; ip -6 -o addr; ip -6 route; exit 3"
    );
    let f = Fixture::running(&script, "");
    let dir = f.dir.path();
    let disk = f.export("qcow2", "web.qcow2");
    let (web, done) = (free_port(), free_port());
    // Three cards: VMware's e1000 and VMXNET3, and virtio-net (KVM's),
    // each on a user network of its own with QEMU's DHCP server.
    let extra: Vec<String> = [
        format!(
            "user,id=n0,domainname=husk.test,dnssearch=lab.husk.test,dnssearch=husk.test,\
             hostfwd=tcp:127.0.0.1:{web}-:8080,hostfwd=tcp:127.0.0.1:{done}-:9000"
        ),
        "e1000,netdev=n0".into(),
        "user,id=n1,net=10.0.3.0/24".into(),
        "vmxnet3,netdev=n1".into(),
        "user,id=n2,net=10.0.4.0/24".into(),
        "virtio-net-pci,netdev=n2".into(),
    ]
    .chunks(2)
    .flat_map(|p| {
        [
            "-netdev".into(),
            p[0].clone(),
            "-device".into(),
            p[1].clone(),
        ]
    })
    .collect();
    let machine = Machine::start(&disk, "qcow2", "virtio", dir, &extra);
    let began = Instant::now();
    while !machine.console().contains("serving") {
        assert!(
            began.elapsed() < Duration::from_secs(300),
            "the appliance did not start serving; console:\n{}",
            machine.console()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The guest's page, through the e1000's forwarded port.
    let page = (0..20)
        .find_map(|_| {
            let got = http_get(web);
            if got.is_err() {
                std::thread::sleep(Duration::from_millis(500));
            }
            got.ok()
        })
        .unwrap_or_else(|| panic!("no page from the guest; console:\n{}", machine.console()));
    assert_eq!(page.trim(), "guest-page");
    // Ending it: one connection to its nc.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", done)).unwrap();
        s.write_all(b"bye\n").unwrap();
    }
    let console = machine.wait_powered_off();
    let addresses = ["10.0.2.15/24", "10.0.3.15/24", "10.0.4.15/24"];
    for a in addresses {
        assert!(console.contains(&format!("inet {a}")), "no {a}:\n{console}");
        assert!(
            console.contains(&format!("{a} from the DHCP server at 10.0.")),
            "init did not report {a}:\n{console}"
        );
    }
    assert!(
        console.contains("default via 10.0."),
        "no default route:\n{console}"
    );
    assert!(console.contains("nameserver 10.0.2.3"), "{console}");
    assert!(
        console.contains("search lab.husk.test husk.test"),
        "the search list (option 119):\n{console}"
    );
    assert!(
        ["10.0.2.15\tweb", "10.0.3.15\tweb", "10.0.4.15\tweb"]
            .iter()
            .any(|l| console.contains(l)),
        "/etc/hosts names the appliance at its address:\n{console}"
    );
    // IPv6 by the kernel's SLAAC from QEMU's router advertisements (its
    // prefix fec0::/64), by the time the test has fetched the page.
    assert!(
        console.contains("inet6 fec0::") && console.contains("default via fe80::"),
        "no IPv6 address or route from router advertisements:\n{console}"
    );
    assert!(
        console.contains(&format!("fetched: {token}")),
        "the guest did not reach the host:\n{console}"
    );
    assert!(
        console.contains("husk-init: the command exited with status 3; powering off"),
        "{console}"
    );
}
