//! OCI archives (a tar of an image layout) and `docker save` archives:
//! unpacked once into the cache, then read like a folder.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{file_digest, hex, Image, Layer, OciError};
use crate::rootfs::Root;

/// Unpacks the archive at `path` into `cache/imports/<key>/` (once; the
/// key is the file's identity: path, device, inode, size, mtime) and
/// returns that folder.
pub fn import(path: &Path, cache: &Path) -> Result<PathBuf, OciError> {
    let io = |what| {
        move |e| OciError::Io {
            path: path.to_path_buf(),
            what,
            source: e,
        }
    };
    let md = std::fs::metadata(path).map_err(io("cannot read image archive"))?;
    let canonical = std::fs::canonicalize(path).map_err(io("cannot read image archive"))?;
    let mut key = Sha256::new();
    key.update(canonical.as_os_str().as_encoded_bytes());
    for n in [
        md.dev(),
        md.ino(),
        md.size(),
        md.mtime() as u64,
        md.mtime_nsec() as u64,
    ] {
        key.update(n.to_le_bytes());
    }
    let dest = cache.join("imports").join(&hex(&key.finalize())[..32]);
    if dest.is_dir() {
        return Ok(dest);
    }
    std::fs::create_dir_all(cache.join("imports")).map_err(io("cannot create cache folder"))?;
    let tmp = crate::cache::temp_sibling(&dest);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(io("cannot create cache folder"))?;
    let result = (|| {
        let mut root = Root::open(&tmp).map_err(|e| OciError::Invalid(e.to_string()))?;
        let file = File::open(path).map_err(io("cannot open image archive"))?;
        let tar = super::unpack::decompress(file).map_err(io("cannot read image archive"))?;
        super::unpack::apply_layer(&mut root, tar).map_err(|e| OciError::Layer {
            digest: format!("archive {}", path.display()),
            source: e,
        })?;
        std::fs::rename(&tmp, &dest).map_err(io("cannot store the unpacked archive"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|()| dest)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    layers: Vec<String>,
}

/// The image in an unpacked `docker save` archive (its `manifest.json`;
/// the first image when it holds several).
pub fn docker_image(dir: &Path) -> Result<Image, OciError> {
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read(&manifest_path).map_err(|e| OciError::Io {
        path: manifest_path.clone(),
        what: "not a docker archive: cannot read manifest.json",
        source: e,
    })?;
    let manifests: Vec<DockerManifest> = serde_json::from_slice(&text).map_err(|e| {
        OciError::Invalid(format!(
            "{}: not a docker manifest: {e}",
            manifest_path.display()
        ))
    })?;
    let Some(m) = manifests.into_iter().next() else {
        return Err(OciError::Invalid(format!(
            "{}: the archive holds no image",
            manifest_path.display()
        )));
    };
    let inside = |name: &str| -> Result<PathBuf, OciError> {
        let rel = crate::rootfs::clean(Path::new(name))
            .map_err(|e| OciError::Invalid(format!("{}: {e}", manifest_path.display())))?;
        Ok(dir.join(rel))
    };
    let config_path = inside(&m.config)?;
    let config_bytes = std::fs::read(&config_path).map_err(|e| OciError::Io {
        path: config_path.clone(),
        what: "cannot read image configuration",
        source: e,
    })?;
    let config =
        ImageConfiguration::from_reader(&config_bytes[..]).map_err(|e| OciError::Json {
            path: config_path.clone(),
            what: "image configuration",
            source: e,
        })?;
    let id = file_digest(&config_path).map_err(|e| OciError::Io {
        path: config_path.clone(),
        what: "cannot read image configuration",
        source: e,
    })?;
    let diff_ids = config.rootfs().diff_ids();
    let layers = m
        .layers
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let path = inside(name)?;
            // Newer archives name blobs by digest; older ones hold plain
            // tars whose digest is the config's diff_id.
            let digest = match name.strip_prefix("blobs/sha256/") {
                Some(h) => format!("sha256:{h}"),
                None => diff_ids.get(i).cloned().ok_or_else(|| {
                    OciError::Invalid(format!(
                        "{}: more layers than the config's rootfs.diff_ids",
                        manifest_path.display()
                    ))
                })?,
            };
            Ok(Layer { digest, path })
        })
        .collect::<Result<_, OciError>>()?;
    Ok(Image {
        id,
        config,
        layers,
        healthcheck: super::healthcheck(&config_bytes),
    })
}
