//! Reads and writes on an overlay disk against a plain byte vector: every
//! read returns what the model holds, whatever the offsets and lengths.
#![no_main]

use std::io::Write;

use devices::storage::Overlay;
use libfuzzer_sys::fuzz_target;

const LEN: usize = 3 * 4096 + 1536; // not whole blocks, on purpose

fuzz_target!(|ops: Vec<(bool, u16, u16, u8)>| {
    let base: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let mut base_file = tempfile::tempfile().expect("a base file");
    base_file.write_all(&base).expect("write the base");
    let mut o = Overlay::new(
        base_file.try_clone().expect("clone"),
        tempfile::tempfile().expect("an upper file"),
    )
    .expect("an overlay");
    drop(base_file);
    let mut model = base;
    for (write, offset, len, fill) in ops {
        let (offset, len) = (offset as usize, len as usize % 9000);
        let fits = offset.checked_add(len).is_some_and(|end| end <= LEN);
        if write {
            let data = vec![fill; len];
            let r = o.write_all_at(&data, offset as u64);
            assert_eq!(r.is_ok(), fits, "write {len} at {offset}");
            if fits {
                model[offset..offset + len].copy_from_slice(&data);
            }
        } else {
            let mut buf = vec![0u8; len];
            let r = o.read_exact_at(&mut buf, offset as u64);
            assert_eq!(r.is_ok(), fits, "read {len} at {offset}");
            if fits {
                assert_eq!(buf, model[offset..offset + len], "read {len} at {offset}");
            }
        }
    }
});
