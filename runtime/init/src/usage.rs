//! What the whole guest uses (the agent's `Usage`, `husk stats`) and
//! what runs in it (`Processes`, `husk top`), read from the kernel's own
//! counters under `/proc`.

use std::fs;
use std::os::unix::fs::MetadataExt;

use agent::{GuestProcess, Usage};

/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`, fixed at 100 in
/// the x86-64 ABI) and the page size its `rss` counts in.
const USER_HZ: u64 = 100;
const PAGE: u64 = 4096;
/// A command line longer than this is cut (a frame holds every process).
const MAX_COMMAND: usize = 1024;

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

/// The numeric entries of `/proc`: every process's folder.
fn pids() -> impl Iterator<Item = (u32, std::path::PathBuf)> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
}

/// Processes in the guest, kernel threads (no command line) left out.
fn processes() -> u32 {
    pids()
        .filter(|(_, dir)| fs::read(dir.join("cmdline")).is_ok_and(|c| !c.is_empty()))
        .count() as u32
}

/// Every process of the guest but kernel threads, by pid, with its user's
/// name from `passwd` (the guest's `/etc/passwd`). One that ends while it
/// is read is left out.
pub fn process_list(passwd: &str) -> Vec<GuestProcess> {
    let uptime_ms = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| (s * 1000.0) as u64);
    let mut list: Vec<GuestProcess> = pids()
        .filter_map(|(pid, dir)| {
            let cmdline = fs::read(dir.join("cmdline")).ok()?;
            if cmdline.is_empty() {
                return None;
            }
            let stat = parse_stat(&fs::read_to_string(dir.join("stat")).ok()?)?;
            let uid = fs::metadata(&dir).ok()?.uid();
            Some(GuestProcess {
                pid,
                ppid: stat.ppid,
                user: husk_init::user::name_of(uid, passwd),
                state: stat.state,
                rss: stat.rss_pages * PAGE,
                cpu_ms: stat.ticks * 1000 / USER_HZ,
                elapsed_ms: uptime_ms.saturating_sub(stat.start_ticks * 1000 / USER_HZ),
                command: command_line(&cmdline),
            })
        })
        .collect();
    list.sort_by_key(|p| p.pid);
    list
}

/// What `ps` takes from `/proc/PID/stat`.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    state: String,
    ppid: u32,
    /// User and system time.
    ticks: u64,
    start_ticks: u64,
    rss_pages: u64,
}

/// `/proc/PID/stat`: `pid (comm) state ppid ...`, where `comm` may hold
/// spaces and parentheses itself, so the fields start after the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // From field 3 (state) on, counted from 1 as proc(5) does.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        state: f.first()?.to_string(),
        ppid: field(4)? as u32,
        ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

/// A command line's arguments (NUL-terminated) joined by spaces, cut at
/// [`MAX_COMMAND`] bytes.
fn command_line(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    let mut text: String = String::from_utf8_lossy(raw).replace('\0', " ");
    if text.len() > MAX_COMMAND {
        let mut end = MAX_COMMAND;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
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
    fn stat_fields_are_found_past_an_odd_command_name() {
        let text = "42 (my (odd) cmd) S 7 42 42 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 1 0 1234 10000000 300 18446744073709551615";
        let stat = parse_stat(text).unwrap();
        assert_eq!(
            stat,
            Stat {
                state: "S".into(),
                ppid: 7,
                ticks: 300,
                start_ticks: 1234,
                rss_pages: 300,
            }
        );
        assert_eq!(parse_stat("42 (cut short) S 7"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn command_lines_are_joined_and_cut() {
        assert_eq!(command_line(b"httpd\0-f\0-p\080\0"), "httpd -f -p 80");
        assert_eq!(command_line(b"no-nul"), "no-nul");
        let long = "\u{e9}".repeat(MAX_COMMAND);
        let cut = command_line(long.as_bytes());
        assert!(cut.len() <= MAX_COMMAND && cut.chars().all(|c| c == '\u{e9}'));
    }

    #[test]
    fn this_process_is_listed_as_itself() {
        let me = std::process::id();
        let list = process_list("root:x:0:0:root:/root:/bin/sh\n");
        let mine = list
            .iter()
            .find(|p| p.pid == me)
            .expect("this test's own process");
        assert_eq!(mine.ppid, std::os::unix::process::parent_id());
        assert!(mine.rss > 0 && !mine.command.is_empty(), "{mine:?}");
        assert!(list.windows(2).all(|w| w[0].pid < w[1].pid));
    }

    #[test]
    fn this_process_is_counted() {
        assert!(processes() >= 1);
        let u = now();
        assert!(u.memory_total > 0 && u.memory_available <= u.memory_total);
    }
}
