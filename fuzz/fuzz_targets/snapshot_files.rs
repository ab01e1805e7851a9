//! Any bytes as a warm start's snapshot files, which a restore reads
//! before anything else: as `pages` (the working set), parsed or refused,
//! and what parses is in order, inside the RAM and saved back the same;
//! as `state.json`, parsed or refused, never a panic, and what parses
//! (KVM's structures as hex strings, MSRs included) writes back to text
//! that parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::snapshot::{save_pages, Snapshot, WorkingSet};

fuzz_target!(|input: (u16, &[u8])| {
    let (ram_pages, data) = (u64::from(input.0), input.1);
    if let Ok(set) = WorkingSet::parse(data, ram_pages) {
        let mut next = 0;
        for run in &set.runs {
            assert!(run.1 > 0 && run.0 >= next, "{run:?} after page {next}");
            next = run.0 + run.1;
        }
        assert!(next <= ram_pages, "runs past {ram_pages} pages");
        let file = tempfile::tempfile().expect("a file");
        save_pages(&set, &file).expect("save");
        let saved = std::fs::read(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            file.as_raw_fd()
        }))
        .expect("read back");
        assert_eq!(saved, data, "a set saves back as it was read");
    }
    if let Ok(state) = serde_json::from_slice::<Snapshot>(data) {
        let text = serde_json::to_vec(&state).expect("a parsed state serialises");
        serde_json::from_slice::<Snapshot>(&text).expect("what it writes parses again");
    }
});
