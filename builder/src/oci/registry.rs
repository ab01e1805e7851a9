//! Pulling an image from a registry (`docker://HOST[:PORT]/REPO[:TAG]`)
//! into the cache, with oci-client. Only the `husk-pull` program has this
//! (cargo feature `registry`): `husk` itself, which is also the VMM, never
//! links an HTTP or TLS stack; it runs `husk-pull` when it needs an image
//! it has not pulled yet.
//!
//! Blobs are stored once by digest in `cache/blobs/sha256/`, verified as
//! they arrive and renamed into place. Each reference gets an OCI layout
//! (`cache/pulls/<hash of the reference>/`) whose `blobs` points at that
//! store, read by the builder like any layout. Registries on the loopback
//! address are spoken to over plain HTTP (as Docker does); others over
//! HTTPS unless listed in `$HUSK_INSECURE_REGISTRIES` (comma-separated).
//! The credentials are those `docker login` or `podman login` saved (see
//! [`super::auth`]); none, an anonymous pull.

use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{Arch, ImageIndex, ImageManifest, Os};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::hex;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0:?} is not an image reference: {1}")]
    Reference(String, String),
    #[error("{reference}: {what}")]
    Registry {
        reference: String,
        what: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("{reference}: {0}", reference = .1)]
    Invalid(String, String),
    #[error("{path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {digest} from {reference}: content does not match its digest")]
    DigestMismatch { reference: String, digest: String },
    #[error(transparent)]
    Auth(#[from] super::auth::AuthError),
}

use super::bare;

fn insecure(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    let listed = std::env::var("HUSK_INSECURE_REGISTRIES").unwrap_or_default();
    host == "localhost"
        || host.starts_with("127.")
        || host == "[::1]"
        || listed.split(',').any(|r| r.trim() == registry)
}

const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Pulls `reference` (linux/amd64 from a multi-arch index) into `cache`
/// and returns the layout folder; blobs already in the store are not
/// fetched again. `progress` hears about each blob fetched.
pub fn pull(
    reference: &str,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, PullError> {
    let parsed: Reference = bare(reference)
        .parse()
        .map_err(|e: oci_client::ParseError| {
            PullError::Reference(reference.into(), e.to_string())
        })?;
    let registry = parsed.resolve_registry().to_string();
    let protocol = if insecure(&registry) {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        ..Default::default()
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PullError::Io {
            path: cache.to_path_buf(),
            what: "cannot start the pull's I/O runtime",
            source: e,
        })?;
    runtime.block_on(pull_async(&client, reference, &parsed, cache, progress))
}

async fn pull_async(
    client: &Client,
    reference: &str,
    parsed: &Reference,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, PullError> {
    let credentials = super::auth::credentials(parsed.resolve_registry(), parsed.repository())?;
    let anonymous = credentials.is_none();
    let registry_err = |what: &str| {
        let what = what.to_string();
        move |source: oci_client::errors::OciDistributionError| {
            use oci_client::errors::OciDistributionError as E;
            let refused = matches!(
                source,
                E::AuthenticationFailure(_) | E::UnauthorizedError { .. }
            );
            let what = match (refused, anonymous) {
                (true, true) => format!(
                    "{what}: the registry wants credentials (docker login or podman login \
                     {} saves them where husk reads them)",
                    parsed.resolve_registry()
                ),
                (true, false) => format!("{what}: the registry refused the saved credentials"),
                (false, _) => what,
            };
            PullError::Registry {
                reference: reference.to_string(),
                what,
                source,
            }
        }
    };
    let store = cache.join("blobs/sha256");
    tokio::fs::create_dir_all(&store)
        .await
        .map_err(|e| PullError::Io {
            path: store.clone(),
            what: "cannot create the blob store",
            source: e,
        })?;
    let auth = match credentials {
        Some(c) => RegistryAuth::Basic(c.user, c.password),
        None => RegistryAuth::Anonymous,
    };
    let (mut bytes, mut digest) = client
        .pull_manifest_raw(parsed, &auth, &MANIFEST_TYPES)
        .await
        .map_err(registry_err("cannot fetch the manifest"))?;
    let mut by_digest = parsed.clone();
    if let Ok(index) = ImageIndex::from_reader(&bytes[..]) {
        // A multi-arch index: keep it, and take linux/amd64.
        {
            store_bytes(&store, &digest, &bytes, reference).await?;
            let pick = index
                .manifests()
                .iter()
                .find(|d| {
                    d.platform()
                        .as_ref()
                        .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
                })
                .ok_or_else(|| {
                    PullError::Invalid(
                        "the image has no linux/amd64 variant".into(),
                        reference.into(),
                    )
                })?;
            by_digest = Reference::with_digest(
                parsed.resolve_registry().to_string(),
                parsed.repository().to_string(),
                pick.digest().to_string(),
            );
            (bytes, digest) = client
                .pull_manifest_raw(&by_digest, &auth, &MANIFEST_TYPES)
                .await
                .map_err(registry_err("cannot fetch the linux/amd64 manifest"))?;
        }
    }
    store_bytes(&store, &digest, &bytes, reference).await?;
    let manifest = ImageManifest::from_reader(&bytes[..])
        .map_err(|e| PullError::Invalid(format!("not an image manifest: {e}"), reference.into()))?;
    let mut blobs = vec![manifest.config().clone()];
    blobs.extend(manifest.layers().iter().cloned());
    let n = blobs.len();
    for (i, desc) in blobs.iter().enumerate() {
        let d = desc.digest().to_string();
        let hexd = d.strip_prefix("sha256:").ok_or_else(|| {
            PullError::Invalid(
                format!("{d}: only sha256 digests are supported"),
                reference.into(),
            )
        })?;
        let dest = store.join(hexd);
        if dest.is_file() {
            continue;
        }
        progress(&format!(
            "pulling blob {}/{n} {d} ({} bytes)",
            i + 1,
            desc.size()
        ));
        let tmp = crate::cache::temp_sibling(&dest);
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| PullError::Io {
                path: tmp.clone(),
                what: "cannot write blob",
                source: e,
            })?;
        let result = client
            .pull_blob(&by_digest, d.as_str(), &mut file)
            .await
            .map_err(registry_err(&format!("cannot fetch blob {d}")));
        let flushed = file.flush().await;
        drop(file);
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        flushed.map_err(|e| PullError::Io {
            path: tmp.clone(),
            what: "cannot write blob",
            source: e,
        })?;
        let found = super::file_digest(&tmp).map_err(|e| PullError::Io {
            path: tmp.clone(),
            what: "cannot read blob",
            source: e,
        })?;
        if found != d {
            let _ = std::fs::remove_file(&tmp);
            return Err(PullError::DigestMismatch {
                reference: reference.into(),
                digest: d,
            });
        }
        std::fs::rename(&tmp, &dest).map_err(|e| PullError::Io {
            path: dest.clone(),
            what: "cannot store blob",
            source: e,
        })?;
    }
    write_layout(reference, cache, &digest, bytes.len())
}

async fn store_bytes(
    store: &Path,
    digest: &str,
    bytes: &[u8],
    reference: &str,
) -> Result<(), PullError> {
    let found = format!("sha256:{}", hex(&Sha256::digest(bytes)));
    if found != digest {
        return Err(PullError::DigestMismatch {
            reference: reference.into(),
            digest: digest.into(),
        });
    }
    let dest = store.join(digest.trim_start_matches("sha256:"));
    let tmp = crate::cache::temp_sibling(&dest);
    let io = |e| PullError::Io {
        path: dest.clone(),
        what: "cannot store blob",
        source: e,
    };
    tokio::fs::write(&tmp, bytes).await.map_err(io)?;
    std::fs::rename(&tmp, &dest).map_err(io)
}

/// The reference's layout: `index.json` naming the manifest (tag
/// `latest`), `blobs` linked to the shared store; renamed into place.
fn write_layout(
    reference: &str,
    cache: &Path,
    manifest: &str,
    size: usize,
) -> Result<PathBuf, PullError> {
    let dir = super::pulled_layout(reference, cache);
    let tmp = crate::cache::temp_sibling(&dir);
    let io = |what| {
        let tmp = tmp.clone();
        move |e| PullError::Io {
            path: tmp,
            what,
            source: e,
        }
    };
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io("cannot create layout"))?;
    std::os::unix::fs::symlink("../../blobs", tmp.join("blobs"))
        .map_err(io("cannot link blobs"))?;
    std::fs::write(tmp.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io("cannot write layout"))?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest,
            "size": size,
            "annotations": {
                "org.opencontainers.image.ref.name": "latest",
                "io.husk.reference": bare(reference),
            },
        }],
    });
    std::fs::write(tmp.join("index.json"), index.to_string()).map_err(io("cannot write layout"))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(io("cannot store layout"))?;
    Ok(dir)
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("{registry}: the registry refused the user name and password")]
    Refused { registry: String },
    #[error("{registry}: {what}")]
    Http {
        registry: String,
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{registry}: {what}")]
    Unexpected { registry: String, what: String },
}

/// The host a registry's API answers on (Docker Hub's is not its name).
fn api_host(registry: &str) -> &str {
    match super::auth::canonical(registry) {
        "index.docker.io" => "registry-1.docker.io",
        other => other,
    }
}

/// The parameters of a `Bearer` challenge (`realm`, `service`, ...), as
/// `WWW-Authenticate` gives them: `key="value"` pairs, commas between.
fn bearer_params(challenge: &str) -> Option<Vec<(String, String)>> {
    let rest = challenge.trim().strip_prefix("Bearer ")?;
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() {
            return Some(params);
        }
        chars.next()?;
        let value: String = if chars.next_if_eq(&'"').is_some() {
            let v = std::iter::from_fn(|| chars.next_if(|c| *c != '"')).collect();
            chars.next()?;
            v
        } else {
            std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect()
        };
        params.push((key.trim().to_ascii_lowercase(), value));
    }
}

/// Checks `creds` with `registry` as `docker login` does: its `/v2/`
/// endpoint, then the credentials as its challenge asks for them (HTTP
/// Basic on `/v2/`, or a token from the token service a `Bearer`
/// challenge names). A registry that wants none takes any.
pub fn check_login(registry: &str, creds: &super::auth::Credentials) -> Result<(), LoginError> {
    let scheme = if insecure(registry) { "http" } else { "https" };
    let url = format!("{scheme}://{}/v2/", api_host(registry));
    let http = |what: &str| {
        let (registry, what) = (registry.to_string(), what.to_string());
        move |source| LoginError::Http {
            registry,
            what,
            source,
        }
    };
    let unexpected = |what: String| LoginError::Unexpected {
        registry: registry.into(),
        what,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unexpected(format!("cannot start the I/O runtime: {e}")))?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let first = client
            .get(&url)
            .send()
            .await
            .map_err(http(&format!("cannot reach {url}")))?;
        if first.status().is_success() {
            return Ok(());
        }
        if first.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Err(unexpected(format!("{url} answered {}", first.status())));
        }
        let challenge = first
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let answer = if challenge.to_ascii_lowercase().starts_with("basic") {
            client
                .get(&url)
                .basic_auth(&creds.user, Some(&creds.password))
                .send()
                .await
                .map_err(http(&format!("cannot reach {url}")))?
        } else {
            let params = bearer_params(&challenge).ok_or_else(|| {
                unexpected(format!(
                    "{url} asks for credentials as {challenge:?}, which husk does not speak"
                ))
            })?;
            let realm = params
                .iter()
                .find(|(k, _)| k == "realm")
                .map(|(_, v)| v.clone())
                .ok_or_else(|| unexpected(format!("{url}'s challenge names no token service")))?;
            let mut query = vec![("account", creds.user.clone())];
            if let Some((_, service)) = params.iter().find(|(k, _)| k == "service") {
                query.push(("service", service.clone()));
            }
            client
                .get(&realm)
                .query(&query)
                .basic_auth(&creds.user, Some(&creds.password))
                .send()
                .await
                .map_err(http(&format!("cannot reach the token service {realm}")))?
        };
        match answer.status() {
            s if s.is_success() => Ok(()),
            reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN => {
                Err(LoginError::Refused {
                    registry: registry.into(),
                })
            }
            s => Err(unexpected(format!("the login answered {s}"))),
        }
    })
}

#[cfg(test)]
mod login_tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_read_with_quoted_commas() {
        let p = bearer_params(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            p,
            [
                (
                    "realm".to_string(),
                    "https://auth.docker.io/token".to_string()
                ),
                ("service".to_string(), "registry.docker.io".to_string()),
                ("scope".to_string(), "repository:a/b:pull,push".to_string()),
            ]
        );
        assert_eq!(bearer_params("Basic realm=x"), None);
        assert_eq!(bearer_params("Bearer realm=\"unterminated"), None);
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
