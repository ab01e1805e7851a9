//! A network interface put into a running VM's empty slot and taken out
//! again, and one the VM booted with taken out of its slot, through the
//! VMM's request socket, with the guest's kernel probing and unbinding
//! the slots' windows (what `husk network connect` and `disconnect` of a
//! running appliance stand on).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boot_tests::husk::built_image;
use boot_tests::husk_kernel;
use husk_init::config::{Overrides, INIT_PATH};
use libtest_mimic::{Failed, Trial};
use vmm::snapshot::{self, OnRequest};
use vmm::{DiskAccess, DiskConfig, VmExit};

pub fn trials() -> Vec<Trial> {
    vec![boot_tests::trial(
        "vmm_an_interface_goes_into_a_running_guests_slot_and_out_again",
        an_interface_goes_in_and_out,
    )]
}

/// The guest: finds the slot of the interface it booted with (eth0) and
/// the empty one (the last platform device), waits for the host's word,
/// probes the empty one, sends a frame from the interface it finds there
/// (eth1), unbinds both, and after the host's second word probes the boot
/// interface's slot again, where the host put another.
const SCRIPT: &str = r#"
n=/sys/class/net
p=/sys/bus/platform
boot=$(basename "$(dirname "$(readlink -f $n/eth0/device)")")
slot=$(ls $p/devices | grep mmio | sort -t. -k2 -n | tail -1)
[ -e $n/eth1 ] && exit 3
echo "boot=$boot"
echo "slot=$slot"
read go
echo $slot > $p/drivers_probe
echo "first=$(cat $n/eth1/address)"
ip link set eth1 up
ip addr add 10.9.0.2/24 dev eth1
ping -c 1 -W 1 10.9.0.1 >/dev/null 2>&1
echo $slot > $p/drivers/virtio-mmio/unbind
echo $boot > $p/drivers/virtio-mmio/unbind
[ -e $n/eth1 ] || [ -e $n/eth0 ] && exit 5
echo unbound
read go
echo $boot > $p/drivers_probe
echo "second=$(cat $n/eth0/address)"
"#;

const BOOT: [u8; 6] = [0x02, 0x48, 0x4b, 0x00, 0x00, 0xb0];
const FIRST: [u8; 6] = [0x02, 0x48, 0x4b, 0x00, 0x00, 0x01];
const SECOND: [u8; 6] = [0x02, 0x48, 0x4b, 0x00, 0x00, 0x02];
const LIMIT: Duration = Duration::from_secs(120);

/// The console's text, shared with the test's thread.
#[derive(Clone, Default)]
struct Console(Arc<Mutex<String>>);

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for a line starting with `prefix`; its rest.
    fn wait(&self, prefix: &str) -> Result<String, String> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let text = self.text();
            if let Some(rest) = text.lines().find_map(|l| l.trim().strip_prefix(prefix)) {
                return Ok(rest.to_string());
            }
            if Instant::now() > deadline {
                return Err(format!("no {prefix:?} on the console:\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Reads passt-framed frames from `hub` until one from `mac` arrives.
fn frame_from(hub: &mut UnixStream, mac: [u8; 6]) -> Result<(), String> {
    hub.set_read_timeout(Some(LIMIT))
        .map_err(|e| e.to_string())?;
    loop {
        let mut len = [0u8; 4];
        hub.read_exact(&mut len)
            .map_err(|e| format!("no frame from the guest: {e}"))?;
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        hub.read_exact(&mut frame)
            .map_err(|e| format!("a frame cut short: {e}"))?;
        if frame.len() >= 14 && frame[6..12] == mac {
            return Ok(());
        }
    }
}

/// The platform device number in a guest's `virtio-mmio.N`.
fn device_number(name: &str) -> Result<u32, String> {
    name.strip_prefix("virtio-mmio.")
        .and_then(|n| n.parse().ok())
        .ok_or(format!("not a platform device: {name:?}"))
}

/// Reads what is left on `hub` until its VM end closes.
fn closes(hub: &mut UnixStream, what: &str) -> Result<(), String> {
    let mut rest = Vec::new();
    hub.set_read_timeout(Some(LIMIT))
        .map_err(|e| e.to_string())?;
    hub.read_to_end(&mut rest)
        .map(drop)
        .map_err(|e| format!("{what}'s socket stayed open: {e}"))
}

fn an_interface_goes_in_and_out() -> Result<(), Failed> {
    let image = built_image("examples/busybox")?;
    let kernel = husk_kernel()?.vmlinux();
    let overrides = Overrides {
        command: Some(vec!["/bin/sh".into(), "-c".into(), SCRIPT.into()]),
        // The appliance's own user may not write to sysfs.
        user: Some("root".into()),
        ..Default::default()
    };
    let console = Console::default();
    let (input, mut to_guest) = std::io::pipe()?;
    let (ours, theirs) = snapshot::request_pair()?;
    theirs.set_nonblocking(true)?;
    let mut cfg = boot_tests::vm::initramfs(&kernel, &image, 128, "", Box::new(console.clone()));
    cfg.initrd = None;
    cfg.cmdline = format!(
        "root=/dev/vda rootfstype=ext4 ro init={INIT_PATH} {}",
        overrides.to_param()
    );
    cfg.disks = vec![DiskConfig {
        path: image,
        access: DiskAccess::ReadOnly,
        upper: None,
    }];
    // One interface it boots with (in a slot of its own, as a VM with
    // slots has), and one empty slot.
    let (boot_end, mut boot_hub) = UnixStream::pair()?;
    cfg.net = vec![vmm::NetConfig {
        mac: BOOT,
        backend: vmm::NetBackendConfig::Stream(boot_end.into()),
        network: Some("boot".into()),
    }];
    cfg.net_slots = 1;
    cfg.console_input = Some(fs::File::from(std::os::fd::OwnedFd::from(input)));
    cfg.snapshot_requests = Some(OnRequest {
        socket: theirs,
        header: Err("a test VM".into()),
    });

    let host = {
        let console = console.clone();
        std::thread::spawn(move || -> Result<(), String> {
            let ask = Duration::from_secs(30);
            let boot = device_number(&console.wait("boot=")?)?;
            let slot = console.wait("slot=")?;
            let device = device_number(&slot)?;
            // The VMM knows which slot the boot interface's network is in.
            let located = snapshot::locate(&ours, "boot", ask).map_err(|e| e.to_string())?;
            if located != boot {
                return Err(format!(
                    "the VMM located boot in virtio-mmio.{located}, the guest's eth0 is in virtio-mmio.{boot}"
                ));
            }
            if snapshot::locate(&ours, "elsewhere", ask).is_ok() {
                return Err("a network no interface is on was located".into());
            }
            // An unplug of an empty slot is refused.
            if snapshot::unplug(&ours, device, ask).is_ok() {
                return Err("an empty slot was unplugged".into());
            }
            let (vm_end, mut hub) = UnixStream::pair().map_err(|e| e.to_string())?;
            let got =
                snapshot::plug(&ours, FIRST, "front", &vm_end, ask).map_err(|e| e.to_string())?;
            drop(vm_end);
            if got != device {
                return Err(format!(
                    "plugged into virtio-mmio.{got}, the guest saw {slot}"
                ));
            }
            if snapshot::locate(&ours, "front", ask).ok() != Some(device) {
                return Err("the plugged interface's network was not located".into());
            }
            to_guest.write_all(b"go\n").map_err(|e| e.to_string())?;
            frame_from(&mut hub, FIRST)?;
            // The guest's driver holds it until the guest lets it go.
            if snapshot::unplug(&ours, device, ask).is_ok() {
                return Err("a slot in the driver's hands was unplugged".into());
            }
            console.wait("unbound")?;
            snapshot::unplug(&ours, device, ask).map_err(|e| e.to_string())?;
            // Each interface's host end hears its VM end close: the VMM
            // kept no other copy, of the boot interface's either.
            closes(&mut hub, "the unplugged interface")?;
            snapshot::unplug(&ours, boot, ask).map_err(|e| e.to_string())?;
            closes(&mut boot_hub, "the boot interface taken out")?;
            if snapshot::locate(&ours, "boot", ask).is_ok() {
                return Err("the boot interface's network was located once it was out".into());
            }
            // The emptied boot slot comes first, then the other.
            let (vm_end, _hub) = UnixStream::pair().map_err(|e| e.to_string())?;
            let got = snapshot::plug(&ours, SECOND, "", &vm_end, ask).map_err(|e| e.to_string())?;
            if got != boot {
                return Err(format!(
                    "the second interface went into virtio-mmio.{got}, not the emptied boot slot"
                ));
            }
            let (spare, _) = UnixStream::pair().map_err(|e| e.to_string())?;
            let got = snapshot::plug(&ours, FIRST, "", &spare, ask).map_err(|e| e.to_string())?;
            if got != device {
                return Err(format!("the third interface went into virtio-mmio.{got}"));
            }
            // No empty slot is left.
            if snapshot::plug(&ours, FIRST, "", &spare, ask).is_ok() {
                return Err("a full slot took another interface".into());
            }
            to_guest.write_all(b"go\n").map_err(|e| e.to_string())?;
            console.wait("second=")?;
            Ok(())
        })
    };
    let out = boot_tests::vm::run(cfg)?;
    let hosted = host.join().map_err(|_| "the test's host thread panicked")?;
    let text = console.text();
    hosted.map_err(|e| format!("{e}\n{text}"))?;
    if out.exit != (VmExit::Shutdown { status: Some(0) }) {
        return Err(format!("the guest: {:?}\n{text}", out.exit).into());
    }
    let first = console.wait("first=")?;
    let second = console.wait("second=")?;
    if first != mac_text(FIRST) || second != mac_text(SECOND) {
        return Err(format!("the guest saw {first} and {second}\n{text}").into());
    }
    Ok(())
}
