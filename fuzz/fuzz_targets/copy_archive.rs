//! Any bytes as a `husk cp` archive from the other side: unpacked or
//! refused, never a panic, and nothing ever lands outside the destination
//! folder (which is there: entries go into it, by either rule).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, archive)) = data.split_first() else {
        return;
    };
    let outer = tempfile::tempdir().expect("a temporary folder");
    let dest = outer.path().join("dest");
    std::fs::create_dir(&dest).expect("the destination");
    let how = agent::copy::Unpack {
        owners: false,
        special_bits: mode & 2 != 0,
    };
    let _ = agent::copy::unpack(archive, dest.to_str().expect("a UTF-8 path"), mode & 1 != 0, how);
    let outside: Vec<_> = std::fs::read_dir(outer.path())
        .expect("read the outer folder")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(outside, ["dest"], "the archive wrote outside its destination");
});
