//! OCI images as the builder reads them: an image layout folder, an OCI
//! archive, or a `docker save` archive, resolved to one manifest for
//! linux/amd64, its configuration, and its layer blobs.

mod archive;
#[cfg(feature = "registry")]
pub mod auth;
mod layout;
#[cfg(feature = "registry")]
pub mod registry;
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
    #[error("{0}: registry images are pulled by husk-pull, which is not installed next to husk (ci/setup builds both; beside a husk of cargo build --release: cargo build --release -p builder --features registry --bin husk-pull), or pull with `skopeo copy docker://... oci:DIR:TAG` and use oci:DIR:TAG")]
    NoPuller(String),
    #[error("{0}: husk-pull failed ({1})")]
    PullFailed(String, std::process::ExitStatus),
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
    /// A docker image's HEALTHCHECK (not in the OCI configuration, which
    /// oci-spec reads).
    pub healthcheck: Option<husk_init::config::ImageHealthcheck>,
}

/// The `HEALTHCHECK` in an image configuration's JSON, as docker writes it
/// (`config.Healthcheck`: `Test`, durations in nanoseconds, `Retries`);
/// `None` for none, `NONE`, or one husk cannot read. Durations of 0 are
/// docker's defaults: 30 s between checks and for one, no start period,
/// 3 retries.
pub fn healthcheck(config: &[u8]) -> Option<husk_init::config::ImageHealthcheck> {
    let value: serde_json::Value = serde_json::from_slice(config).ok()?;
    let h = value.get("config")?.get("Healthcheck")?;
    let test: Vec<String> = h
        .get("Test")?
        .as_array()?
        .iter()
        .map(|w| w.as_str().map(String::from))
        .collect::<Option<_>>()?;
    let command = match test.split_first()? {
        (kind, args) if kind == "CMD" && !args.is_empty() => args.to_vec(),
        (kind, [shell]) if kind == "CMD-SHELL" => {
            vec!["/bin/sh".into(), "-c".into(), shell.clone()]
        }
        _ => return None,
    };
    let ms = |key: &str, default: u64| match h.get(key).and_then(|v| v.as_u64()) {
        Some(ns) if ns > 0 => (ns / 1_000_000).max(1),
        _ => default,
    };
    let retries = h.get("Retries").and_then(|v| v.as_u64()).unwrap_or(0);
    Some(husk_init::config::ImageHealthcheck {
        command,
        interval_ms: ms("Interval", 30_000),
        timeout_ms: ms("Timeout", 30_000),
        start_period_ms: ms("StartPeriod", 0),
        retries: if retries == 0 {
            3
        } else {
            retries.min(100) as u32
        },
    })
}

impl Image {
    /// Opens the image `source` names. Archives are unpacked once into
    /// `cache/imports/` (keyed by the archive file's identity) and read
    /// from there afterwards.
    pub fn open(source: &Source, cache: &Path) -> Result<Self, OciError> {
        match source {
            Source::Scratch => Err(OciError::Invalid("scratch has no image".into())),
            Source::Dir(dir) => Err(OciError::Invalid(format!(
                "dir:{} is a folder booted as it is, not an image",
                dir.display()
            ))),
            Source::OciLayout { dir, tag } => Layout::open(dir)?.image(tag.as_deref()),
            Source::OciArchive(path) => {
                let dir = archive::import(path, cache)?;
                Layout::open(&dir)?.image(None)
            }
            Source::DockerArchive(path) => {
                let dir = archive::import(path, cache)?;
                archive::docker_image(&dir)
            }
            Source::Registry(reference) => {
                let dir = pulled_layout(reference, cache);
                if !is_pulled(reference, cache) {
                    run_pull(reference, cache)?;
                }
                Layout::open(&dir)?.image(Some("latest"))
            }
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

/// The reference without its `docker://` prefix.
pub fn bare(reference: &str) -> &str {
    reference.strip_prefix("docker://").unwrap_or(reference)
}

/// Where the pulled layout of a registry reference lives in `cache`.
/// A pulled reference is used as it is; `husk-pull REF` pulls it again.
pub fn pulled_layout(reference: &str, cache: &Path) -> PathBuf {
    let key = hex(&Sha256::digest(bare(reference).as_bytes()));
    cache.join("pulls").join(&key[..32])
}

/// Whether `reference` was pulled into `cache` (a build uses it as it is).
pub fn is_pulled(reference: &str, cache: &Path) -> bool {
    pulled_layout(reference, cache).join("index.json").is_file()
}

/// The `husk-pull` program: `$HUSK_PULL`, else the one beside the
/// running program, if there is one.
pub fn puller() -> Option<PathBuf> {
    match std::env::var_os("HUSK_PULL").filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("husk-pull")))
            .filter(|p| p.is_file()),
    }
}

/// Runs `husk-pull` (`$HUSK_PULL`, else beside the running program) to
/// pull `reference` into `cache`, again if it was (what the tag names
/// now; blobs already stored are not fetched); its progress goes to
/// stderr.
pub fn run_pull(reference: &str, cache: &Path) -> Result<(), OciError> {
    let program = puller().ok_or_else(|| OciError::NoPuller(reference.to_string()))?;
    let status = std::process::Command::new(&program)
        .arg(reference)
        .env("HUSK_CACHE_DIR", cache)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| OciError::Io {
            path: program.clone(),
            what: "cannot run husk-pull",
            source: e,
        })?;
    if !status.success() {
        return Err(OciError::PullFailed(reference.to_string(), status));
    }
    Ok(())
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

pub use agent::hex::encode as hex;

/// `sha256:HEX` of a file's content.
pub fn file_digest(path: &Path) -> io::Result<String> {
    let mut r = HashingReader::new(File::open(path)?);
    r.drain()?;
    Ok(r.digest())
}

#[cfg(test)]
mod tests {
    #[test]
    fn healthchecks_are_read_as_docker_writes_them() {
        let check = |test: serde_json::Value| {
            let config = serde_json::json!({"config": {"Healthcheck": {"Test": test}}});
            super::healthcheck(&serde_json::to_vec(&config).unwrap()).map(|h| h.command)
        };
        assert_eq!(
            check(serde_json::json!(["CMD", "pg_isready", "-q"])),
            Some(vec!["pg_isready".to_string(), "-q".into()])
        );
        assert_eq!(
            check(serde_json::json!(["CMD-SHELL", "curl -f localhost"])),
            Some(vec![
                "/bin/sh".to_string(),
                "-c".into(),
                "curl -f localhost".into()
            ])
        );
        for none in [
            serde_json::json!(["NONE"]),
            serde_json::json!([]),
            serde_json::json!(["CMD"]),
            serde_json::json!(["CMD-SHELL", "a", "b"]),
            serde_json::json!(["CMD", 1]),
            serde_json::json!("CMD true"),
        ] {
            assert_eq!(check(none.clone()), None, "{none}");
        }
        assert_eq!(super::healthcheck(b"{\"config\": {}}"), None);
        assert_eq!(super::healthcheck(b"not json"), None);
        let h = super::healthcheck(
            br#"{"config": {"Healthcheck": {"Test": ["CMD", "x"], "Interval": 1000,
                "StartPeriod": 2000000000, "Retries": 1000}}}"#,
        )
        .unwrap();
        assert_eq!((h.interval_ms, h.timeout_ms), (1, 30_000), "at least 1 ms");
        assert_eq!((h.start_period_ms, h.retries), (2000, 100));
    }
}
