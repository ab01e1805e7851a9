//! Any bytes as an image layer (a tar stream): unpacked or refused, never a
//! panic, and nothing ever lands outside the root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let outer = tempfile::tempdir().expect("a temporary folder");
    let root_path = outer.path().join("root");
    std::fs::create_dir(&root_path).expect("the root");
    let mut root = builder::rootfs::Root::open(&root_path).expect("open the root");
    let _ = builder::oci::unpack::apply_layer(&mut root, data);
    let outside: Vec<_> = std::fs::read_dir(outer.path())
        .expect("read the outer folder")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(outside, ["root"], "the layer wrote outside its root");
});
