//! OCI images as the builder reads them: an image layout folder, an OCI
//! archive, or a `docker save` archive, resolved to one manifest for
//! linux/amd64, its configuration, and its layer blobs.

mod archive;
mod layout;
pub mod unpack;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use appliance_spec::Source;
use oci_spec::image::ImageConfiguration;
use sha2::{Digest as _, Sha256};

pub use layout::Layout;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a valid {what}")]
    Json {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("layer {digest}")]
    Layer {
        digest: String,
        #[source]
        source: unpack::UnpackError,
    },
    #[error("blob {digest}: its content does not match its digest (found sha256:{found}); the image is corrupt")]
    DigestMismatch { digest: String, found: String },
    #[error("registry images ({0}) need husk built with the \"registry\" feature, which this build does not have; pull it first with `skopeo copy docker://... oci:DIR:TAG` and use oci:DIR:TAG")]
    RegistryUnsupported(String),
}

/// One layer: where its blob is and what it must hash to.
#[derive(Debug, Clone)]
pub struct Layer {
    /// `sha256:HEX` (for docker archives without digests: the tar's hash).
    pub digest: String,
    pub path: PathBuf,
}

/// An image resolved to what the builder needs.
#[derive(Debug, Clone)]
pub struct Image {
    /// Identifies the content: the manifest digest (for docker archives,
    /// the config digest).
    pub id: String,
    pub config: ImageConfiguration,
    pub layers: Vec<Layer>,
}

impl Image {
    /// Opens the image `source` names. Archives are unpacked once into
    /// `cache/imports/` (keyed by the archive file's identity) and read
    /// from there afterwards.
    pub fn open(source: &Source, cache: &Path) -> Result<Self, OciError> {
        match source {
            Source::Scratch => Err(OciError::Invalid("scratch has no image".into())),
            Source::OciLayout { dir, tag } => Layout::open(dir)?.image(tag.as_deref()),
            Source::OciArchive(path) => {
                let dir = archive::import(path, cache)?;
                Layout::open(&dir)?.image(None)
            }
            Source::DockerArchive(path) => {
                let dir = archive::import(path, cache)?;
                archive::docker_image(&dir)
            }
            Source::Registry(reference) => Err(OciError::RegistryUnsupported(reference.clone())),
        }
    }

    /// Applies every layer in order to `root`, checking each blob's
    /// digest as it streams.
    pub fn unpack(
        &self,
        root: &mut crate::rootfs::Root,
        mut progress: impl FnMut(usize, &Layer),
    ) -> Result<Vec<unpack::LayerStats>, OciError> {
        let mut all = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            progress(i, layer);
            let file = File::open(&layer.path).map_err(|e| OciError::Io {
                path: layer.path.clone(),
                what: "cannot open layer blob",
                source: e,
            })?;
            let mut hashing = HashingReader::new(file);
            let layer_err = |source| OciError::Layer {
                digest: layer.digest.clone(),
                source,
            };
            let tar = unpack::decompress(&mut hashing)
                .map_err(|e| layer_err(unpack::UnpackError::Tar(e)))?;
            let result = unpack::apply_layer(root, tar);
            // A corrupt blob is reported as such, whatever the tar reader
            // made of it.
            hashing.drain().map_err(|e| OciError::Io {
                path: layer.path.clone(),
                what: "cannot read layer blob",
                source: e,
            })?;
            hashing.check(&layer.digest)?;
            all.push(result.map_err(layer_err)?);
        }
        Ok(all)
    }
}

/// Reads through, hashing with SHA-256.
pub struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hash: Sha256::new(),
        }
    }

    fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }

    /// `sha256:HEX` of everything read.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex(&self.hash.clone().finalize()))
    }

    fn check(&self, expected: &str) -> Result<(), OciError> {
        let found = self.digest();
        if found != expected {
            return Err(OciError::DigestMismatch {
                digest: expected.to_string(),
                found: found.trim_start_matches("sha256:").to_string(),
            });
        }
        Ok(())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:HEX` of a file's content.
pub fn file_digest(path: &Path) -> io::Result<String> {
    let mut r = HashingReader::new(File::open(path)?);
    r.drain()?;
    Ok(r.digest())
}
