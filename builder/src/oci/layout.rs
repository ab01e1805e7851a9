//! An OCI image layout folder (`oci-layout`, `index.json`, `blobs/`).

use std::path::{Path, PathBuf};

use oci_spec::image::{Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, Os};

use super::{Image, Layer, OciError};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    pub fn open(dir: &Path) -> Result<Self, OciError> {
        if !dir.join("oci-layout").is_file() || !dir.join("index.json").is_file() {
            return Err(OciError::Invalid(format!(
                "{}: not an OCI image layout (no oci-layout or index.json file)",
                dir.display()
            )));
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
        })
    }

    fn blob_path(&self, digest: &oci_spec::image::Digest) -> Result<PathBuf, OciError> {
        // oci-spec checks that a sha256 digest is 64 lowercase hex digits,
        // so the path cannot leave blobs/.
        if digest.algorithm().as_ref() != "sha256" {
            return Err(OciError::Invalid(format!(
                "{digest}: only sha256 digests are supported"
            )));
        }
        Ok(self.dir.join("blobs/sha256").join(digest.digest()))
    }

    /// A small blob (index, manifest, config), checked against its digest.
    fn read_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, OciError> {
        let path = self.blob_path(desc.digest())?;
        let bytes = std::fs::read(&path).map_err(|e| OciError::Io {
            path: path.clone(),
            what: "cannot read blob",
            source: e,
        })?;
        let mut r = super::HashingReader::new(&bytes[..]);
        std::io::copy(&mut r, &mut std::io::sink()).expect("reading memory");
        r.check(desc.digest().as_ref())?;
        Ok(bytes)
    }

    /// The image tagged `tag`, or the only (or `latest`) image when no tag
    /// is given.
    pub fn image(&self, tag: Option<&str>) -> Result<Image, OciError> {
        let index_path = self.dir.join("index.json");
        let index = ImageIndex::from_file(&index_path).map_err(|e| OciError::Json {
            path: index_path.clone(),
            what: "image index",
            source: e,
        })?;
        let tag_of = |d: &Descriptor| d.annotations().as_ref()?.get(REF_NAME).cloned();
        let manifests = index.manifests();
        let chosen = match tag {
            Some(t) => manifests.iter().find(|d| tag_of(d).as_deref() == Some(t)),
            None if manifests.len() == 1 => manifests.first(),
            None => manifests
                .iter()
                .find(|d| tag_of(d).as_deref() == Some("latest")),
        };
        let Some(desc) = chosen else {
            let tags: Vec<String> = manifests.iter().filter_map(tag_of).collect();
            return Err(OciError::Invalid(format!(
                "{}: no image tagged {:?}; the layout has: {}",
                self.dir.display(),
                tag.unwrap_or("latest"),
                if tags.is_empty() {
                    "no tags".to_string()
                } else {
                    tags.join(", ")
                }
            )));
        };
        self.resolve(desc, 0)
    }

    fn resolve(&self, desc: &Descriptor, depth: u32) -> Result<Image, OciError> {
        let media = desc.media_type().to_string();
        let bytes = self.read_blob(desc)?;
        let blob = self.blob_path(desc.digest())?;
        if media.contains("index") || media.contains("manifest.list") {
            if depth > 2 {
                return Err(OciError::Invalid(format!(
                    "{}: image indexes nest too deep",
                    blob.display()
                )));
            }
            let index = ImageIndex::from_reader(&bytes[..]).map_err(|e| OciError::Json {
                path: blob.clone(),
                what: "image index",
                source: e,
            })?;
            let amd64 = |d: &&Descriptor| {
                d.platform()
                    .as_ref()
                    .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
            };
            let pick = index.manifests().iter().find(amd64).or_else(|| {
                let all = index.manifests();
                (all.len() == 1 && all[0].platform().is_none()).then(|| &all[0])
            });
            let Some(pick) = pick else {
                return Err(OciError::Invalid(format!(
                    "{}: the image has no linux/amd64 variant",
                    blob.display()
                )));
            };
            return self.resolve(pick, depth + 1);
        }
        let manifest = ImageManifest::from_reader(&bytes[..]).map_err(|e| OciError::Json {
            path: blob.clone(),
            what: "image manifest",
            source: e,
        })?;
        let config_path = self.blob_path(manifest.config().digest())?;
        let config_bytes = self.read_blob(manifest.config())?;
        let config =
            ImageConfiguration::from_reader(&config_bytes[..]).map_err(|e| OciError::Json {
                path: config_path,
                what: "image configuration",
                source: e,
            })?;
        let layers = manifest
            .layers()
            .iter()
            .map(|l| {
                Ok(Layer {
                    digest: l.digest().to_string(),
                    path: self.blob_path(l.digest())?,
                })
            })
            .collect::<Result<_, OciError>>()?;
        Ok(Image {
            id: desc.digest().to_string(),
            config,
            layers,
            healthcheck: super::healthcheck(&config_bytes),
        })
    }
}
