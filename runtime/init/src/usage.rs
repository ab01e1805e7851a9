//! What the whole guest uses (the agent's `Usage`, `husk stats`), read
//! from the kernel's own counters under `/proc`.

use std::fs;

use agent::Usage;

/// The guest's figures now. A file that cannot be read counts nothing.
pub fn now() -> Usage {
    let read = |path| fs::read_to_string(path).unwrap_or_default();
    let (memory_total, memory_available) = meminfo(&read("/proc/meminfo"));
    let (net_rx, net_tx) = net_dev(&read("/proc/net/dev"));
    let (block_read, block_write) = diskstats(&read("/proc/diskstats"));
    Usage {
        memory_total,
        memory_available,
        net_rx,
        net_tx,
        block_read,
        block_write,
        pids: processes(),
    }
}

/// `MemTotal` and `MemAvailable`, in bytes.
fn meminfo(text: &str) -> (u64, u64) {
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |k| k * 1024)
    };
    (kib("MemTotal"), kib("MemAvailable"))
}

/// Bytes received and sent, summed over every interface but `lo`.
fn net_dev(text: &str) -> (u64, u64) {
    // Two header lines, then `iface: rx_bytes rx_packets ... (8 rx
    // fields) tx_bytes ...`.
    text.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim() != "lo")
        .map(|(_, fields)| {
            let f: Vec<u64> = fields
                .split_whitespace()
                .map(|n| n.parse().unwrap_or(0))
                .collect();
            (
                f.first().copied().unwrap_or(0),
                f.get(8).copied().unwrap_or(0),
            )
        })
        .fold((0, 0), |(r, t), (dr, dt)| (r + dr, t + dt))
}

/// Bytes read and written, summed over whole virtio disks (`vda`, not
/// `vda1`: a partition's sectors are its disk's too).
fn diskstats(text: &str) -> (u64, u64) {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = *f.get(2)?;
            let whole = name
                .strip_prefix("vd")?
                .chars()
                .all(|c| c.is_ascii_lowercase());
            // Fields 6 and 10 (from 1): sectors read, sectors written; a
            // sector here is always 512 bytes.
            let sectors = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            whole.then(|| (sectors(5) * 512, sectors(9) * 512))
        })
        .fold((0, 0), |(r, w), (dr, dw)| (r + dr, w + dw))
}

/// Processes in the guest, kernel threads (no command line) left out.
fn processes() -> u32 {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| fs::read(e.path().join("cmdline")).is_ok_and(|c| !c.is_empty()))
        .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_in_bytes() {
        let text = "MemTotal:         120000 kB\nMemFree:  1 kB\nMemAvailable:     100000 kB\n";
        assert_eq!(meminfo(text), (120_000 * 1024, 100_000 * 1024));
        assert_eq!(meminfo(""), (0, 0));
    }

    #[test]
    fn net_dev_leaves_loopback_out() {
        let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    9999       9    0    0    0     0          0         0     9999       9    0    0    0     0       0          0
  eth0:    1500      10    0    0    0     0          0         0      700       5    0    0    0     0       0          0
  eth1:      10       1    0    0    0     0          0         0       20       1    0    0    0     0       0          0
";
        assert_eq!(net_dev(text), (1510, 720));
    }

    #[test]
    fn diskstats_counts_whole_disks_in_bytes() {
        let text = "\
 254       0 vda 100 0 8 5 50 0 16 7 0 10 12 0 0 0 0 0 0
 254       1 vda1 100 0 8 5 50 0 16 7 0 10 12 0 0 0 0 0 0
 254      16 vdb 1 0 2 0 1 0 4 0 0 0 0 0 0 0 0 0 0
   7       0 loop0 1 0 1000 0 0 0 0 0 0 0 0
";
        assert_eq!(diskstats(text), ((8 + 2) * 512, (16 + 4) * 512));
    }

    #[test]
    fn this_process_is_counted() {
        assert!(processes() >= 1);
        let u = now();
        assert!(u.memory_total > 0 && u.memory_available <= u.memory_total);
    }
}
