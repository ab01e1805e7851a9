//! Helpers for the builder's tests: the static init, fresh caches, and OCI
//! images assembled from hand-made layers (including hostile ones).

#![allow(dead_code)] // each test binary uses its own part

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The static init `husk build` installs; a test cannot build images
/// without it, and says how to get it.
pub fn init() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    builder::find_init(&exe).unwrap_or_else(|e| panic!("{e}"))
}

/// `examples/prepare`: the examples' inputs (a static hello, a busybox
/// OCI layout made with umoci).
pub fn prepare_examples() {
    let status = Command::new(workspace_root().join("examples/prepare"))
        .status()
        .expect("examples/prepare runs");
    assert!(status.success(), "examples/prepare failed");
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", builder::oci::hex(&Sha256::digest(bytes)))
}

/// One tar entry, written with raw header fields so tests can make what
/// well-behaved tar writers refuse (`..` paths, links out of the root).
pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Owned(&'a str, &'a [u8], u32, u32, u32),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDev(&'a str),
    /// A PAX header giving the next entry an extended attribute.
    Xattr(&'a str, &'a [u8]),
}

pub fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if let E::Xattr(name, value) = *e {
            let key = format!("SCHILY.xattr.{name}");
            b.append_pax_extensions([(key.as_str(), value)]).unwrap();
            continue;
        }
        let mut h = tar::Header::new_ustar();
        let (name, kind, link, data, mode, uid, gid): (&str, _, &str, &[u8], u32, u32, u32) =
            match *e {
                E::Dir(n) => (n, tar::EntryType::Directory, "", b"", 0o755, 0, 0),
                E::File(n, d) => (n, tar::EntryType::Regular, "", d, 0o644, 0, 0),
                E::Owned(n, d, m, u, g) => (n, tar::EntryType::Regular, "", d, m, u, g),
                E::Symlink(n, t) => (n, tar::EntryType::Symlink, t, b"", 0o777, 0, 0),
                E::HardLink(n, t) => (n, tar::EntryType::Link, t, b"", 0o644, 0, 0),
                E::CharDev(n) => (n, tar::EntryType::Char, "", b"", 0o666, 0, 0),
                E::Xattr(..) => unreachable!("handled above"),
            };
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid.into());
        h.set_gid(gid.into());
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

#[derive(Clone, Copy)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// Bytes taken as an already-gzipped blob, as they are (for broken ones).
    AsGzip,
}

pub fn compress(tar: &[u8], c: Compression) -> (Vec<u8>, &'static str) {
    match c {
        Compression::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            (
                e.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Compression::Zstd => (
            zstd::encode_all(tar, 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        Compression::AsGzip => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar+gzip"),
    }
}

/// Writes an OCI image layout at `dir` (tag `latest`) whose layers are
/// `layers` (tar bytes, compressed as given). Returns the layer blobs'
/// digests.
pub fn oci_layout(dir: &Path, layers: &[(Vec<u8>, Compression)], cmd: &[&str]) -> Vec<String> {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha256(bytes);
        std::fs::write(
            dir.join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
            bytes,
        )
        .unwrap();
        d
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut digests = Vec::new();
    for (tar, c) in layers {
        let (blob, media) = compress(tar, *c);
        let d = put(&blob);
        diff_ids.push(sha256(tar));
        descs.push(serde_json::json!({"mediaType": media, "digest": d, "size": blob.len()}));
        digests.push(d);
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let config_digest = put(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": descs,
    })
    .to_string();
    let manifest_digest = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    digests
}

/// What the cache folder holds besides the kernel: built images and any
/// leftovers of a failed build.
pub fn cache_images(cache: &Path) -> Vec<String> {
    match std::fs::read_dir(cache.join("images")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The full error chain, as husk prints it.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// Writes a multi-arch OCI layout at `dir`: tag `latest` names an image
/// index with an arm64 and an amd64 image (in that order); each holds one
/// file, `/arch`, saying which it is.
pub fn multi_arch_layout(dir: &Path) {
    let mut manifests = Vec::new();
    for arch in ["arm64", "amd64"] {
        let sub = dir.join(format!("tmp-{arch}"));
        oci_layout(
            &sub,
            &[(tar(&[E::File("arch", arch.as_bytes())]), Compression::Gzip)],
            &["/bin/sh"],
        );
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sub.join("index.json")).unwrap()).unwrap();
        let mut desc = index["manifests"][0].clone();
        desc.as_object_mut().unwrap().remove("annotations");
        desc["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        manifests.push(desc);
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        for blob in std::fs::read_dir(sub.join("blobs/sha256")).unwrap() {
            let blob = blob.unwrap();
            std::fs::copy(blob.path(), dir.join("blobs/sha256").join(blob.file_name())).unwrap();
        }
        std::fs::remove_dir_all(&sub).unwrap();
    }
    let image_index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    })
    .to_string();
    let digest = sha256(image_index.as_bytes());
    std::fs::write(
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
        &image_index,
    )
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                       "digest": digest, "size": image_index.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// The content of `/arch` in a built image (see [`multi_arch_layout`]).
pub fn arch_of(image: &Path) -> String {
    let out = Command::new("debugfs")
        .args(["-R", "cat /arch"])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
