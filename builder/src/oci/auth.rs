//! The credentials a pull sends: those `docker login` and `podman login`
//! saved, read from the files those tools write (in their order:
//! `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.config/containers/auth.json`, `$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`), or from the credential helper such a file
//! names (`credHelpers`, `credsStore`: `docker-credential-NAME get`). No
//! credentials: the pull is anonymous. `husk login` saves credentials
//! where `podman login` does ([`login_file`]), and `husk logout` removes
//! them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{}: not a credentials file: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: the credentials of {registry} are not base64 of USER:PASSWORD", path.display())]
    Entry { path: PathBuf, registry: String },
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the credential helper docker-credential-{helper} gave no credentials for {registry}: {why}")]
    Helper {
        helper: String,
        registry: String,
        why: String,
    },
}

/// A user name and its password (or token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

#[derive(Deserialize, Default)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: std::collections::HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
}

fn var(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// podman's files, in its order.
fn podman_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(f) = var("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(f));
    }
    if let Some(run) = var("XDG_RUNTIME_DIR") {
        files.push(Path::new(&run).join("containers/auth.json"));
    }
    if let Some(h) = var("HOME") {
        files.push(Path::new(&h).join(".config/containers/auth.json"));
    }
    files
}

/// The files to look in, in order: podman's, then docker's.
fn files() -> Vec<PathBuf> {
    let home = var("HOME").map(PathBuf::from);
    let mut files = podman_files();
    match (var("DOCKER_CONFIG"), &home) {
        (Some(d), _) => files.push(Path::new(&d).join("config.json")),
        (None, Some(h)) => files.push(h.join(".docker/config.json")),
        (None, None) => {}
    }
    files
}

/// Where `husk login` saves credentials, as `podman login` does:
/// `$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json`,
/// else `~/.config/containers/auth.json` (the first files a pull reads).
pub fn login_file() -> Option<PathBuf> {
    podman_files().into_iter().next()
}

/// The `auths` key `husk login REGISTRY` writes: the registry as given,
/// Docker Hub as podman names it.
fn login_key(registry: &str) -> String {
    match canonical(registry) {
        "index.docker.io" => "docker.io".into(),
        _ => registry.into(),
    }
}

/// The auth file at `path` as JSON, every field kept (an absent file is
/// an empty one).
fn read_json(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
    match std::fs::read(path) {
        Ok(text) => serde_json::from_slice(&text).map_err(|source| AuthError::File {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(source) => Err(AuthError::Io {
            path: path.to_path_buf(),
            what: "cannot read the credentials file",
            source,
        }),
    }
}

/// Writes the auth file whole, mode 0600 (its folder made 0700 if
/// missing): a temporary file beside it, renamed over it.
fn write_json(
    path: &Path,
    json: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), AuthError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |what| {
        move |source| AuthError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("cannot make the credentials file's folder"))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".husk-tmp");
    let tmp = PathBuf::from(tmp);
    let text = serde_json::to_vec_pretty(json).expect("JSON values serialize");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&text).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io("cannot write the credentials file"))
}

/// Saves `creds` for `registry` in the auth file at `path`, as `podman
/// login` does; the file's other entries and fields stay.
pub fn save(path: &Path, registry: &str, creds: &Credentials) -> Result<(), AuthError> {
    let mut json = read_json(path)?;
    let auths = json
        .entry("auths")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let Some(auths) = auths.as_object_mut() else {
        return Err(AuthError::File {
            path: path.to_path_buf(),
            source: serde::de::Error::custom("its \"auths\" is not an object"),
        });
    };
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", creds.user, creds.password));
    auths.insert(login_key(registry), serde_json::json!({ "auth": auth }));
    write_json(path, &json)
}

/// Removes every entry of `registry` (any spelling of it, and those
/// limited to one of its repositories) from the auth file at `path`;
/// whether there was one.
pub fn forget(path: &Path, registry: &str) -> Result<bool, AuthError> {
    let mut json = read_json(path)?;
    let Some(auths) = json.get_mut("auths").and_then(|a| a.as_object_mut()) else {
        return Ok(false);
    };
    let before = auths.len();
    let wanted = canonical(registry);
    auths.retain(|key, _| key_parts(key).0 != wanted);
    if auths.len() == before {
        return Ok(false);
    }
    write_json(path, &json)?;
    Ok(true)
}

/// The files other than `except` that hold credentials for `registry`
/// (docker's, for a `husk logout` to point at).
pub fn held_elsewhere(registry: &str, except: &Path) -> Vec<PathBuf> {
    files()
        .into_iter()
        .filter(|f| f != except)
        .filter(|f| {
            std::fs::read(f)
                .ok()
                .and_then(|t| serde_json::from_slice::<AuthFile>(&t).ok())
                .is_some_and(|file| {
                    file.auths
                        .keys()
                        .any(|k| key_parts(k).0 == canonical(registry))
                })
        })
        .collect()
}

/// Docker Hub goes by several names; the one oci-client resolves to.
pub(super) fn canonical(host: &str) -> &str {
    match host {
        "docker.io" | "registry-1.docker.io" | "index.docker.io" => "index.docker.io",
        other => other,
    }
}

/// A key of `auths` as the tools write it (`registry`, `registry/repo`,
/// `https://registry/v1/`): its registry, and the repository it is
/// limited to, if any.
fn key_parts(key: &str) -> (&str, &str) {
    let bare = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (host, path) = bare.split_once('/').unwrap_or((bare, ""));
    let path = path.trim_end_matches('/');
    let repo = match path {
        "v1" | "v2" => "",
        p => p,
    };
    (canonical(host), repo)
}

/// The credentials for `repository` on `registry`, if any file has them.
pub fn credentials(registry: &str, repository: &str) -> Result<Option<Credentials>, AuthError> {
    for path in files() {
        let Ok(text) = std::fs::read(&path) else {
            continue;
        };
        let file: AuthFile = serde_json::from_slice(&text).map_err(|source| AuthError::File {
            path: path.clone(),
            source,
        })?;
        if let Some(found) = from_file(&file, &path, registry, repository)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn from_file(
    file: &AuthFile,
    path: &Path,
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, AuthError> {
    let registry = canonical(registry);
    // The most specific key: one limited to this repository (or a
    // namespace of it) before the registry's own.
    let best = file
        .auths
        .iter()
        .filter_map(|(key, entry)| {
            let (host, repo) = key_parts(key);
            let fits = host == registry
                && (repo.is_empty()
                    || repository == repo
                    || repository.starts_with(&format!("{repo}/")));
            fits.then_some((repo.len(), key, entry))
        })
        .max_by_key(|(len, ..)| *len);
    if let Some((_, key, AuthEntry { auth: Some(auth) })) = best {
        let bad = || AuthError::Entry {
            path: path.to_path_buf(),
            registry: key.clone(),
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(decoded).map_err(|_| bad())?;
        let (user, password) = text.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials {
            user: user.into(),
            password: password.into(),
        }));
    }
    let helper = file
        .cred_helpers
        .iter()
        .find(|(key, _)| key_parts(key).0 == registry)
        .map(|(_, h)| h)
        .or(file.creds_store.as_ref());
    match helper {
        Some(h) => from_helper(h, registry).map(Some),
        None => Ok(None),
    }
}

/// `docker-credential-HELPER get`, as docker runs it: the registry on
/// stdin, `{"Username": ..., "Secret": ...}` on stdout.
fn from_helper(helper: &str, registry: &str) -> Result<Credentials, AuthError> {
    let fail = |why: String| AuthError::Helper {
        helper: helper.into(),
        registry: registry.into(),
        why,
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(registry.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        return Err(fail(said.trim().to_string()));
    }
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username")]
        user: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let a: Answer = serde_json::from_slice(&out.stdout).map_err(|e| fail(e.to_string()))?;
    Ok(Credentials {
        user: a.user,
        password: a.secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str) -> AuthFile {
        serde_json::from_str(json).unwrap()
    }

    fn creds(user: &str, password: &str) -> Option<Credentials> {
        Some(Credentials {
            user: user.into(),
            password: password.into(),
        })
    }

    #[test]
    fn the_most_specific_saved_entry_is_used() {
        // aHVzazpwdw== is husk:pw, b3RoZXI6eA== is other:x.
        let f = file(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHVzazpwdw=="},
                "reg.test:5000": {"auth": "aHVzazpwdw=="},
                "reg.test:5000/team": {"auth": "b3RoZXI6eA=="}
            }}"#,
        );
        let at = |reg, repo| from_file(&f, Path::new("f"), reg, repo).unwrap();
        assert_eq!(at("index.docker.io", "library/nginx"), creds("husk", "pw"));
        assert_eq!(at("reg.test:5000", "app"), creds("husk", "pw"));
        assert_eq!(at("reg.test:5000", "team/app"), creds("other", "x"));
        assert_eq!(at("reg.test:5000", "teamwork/app"), creds("husk", "pw"));
        assert_eq!(at("elsewhere.test", "app"), None);
        // podman's name for Docker Hub.
        let podman = file(r#"{"auths": {"docker.io": {"auth": "aHVzazpwdw=="}}}"#);
        let found = from_file(&podman, Path::new("f"), "index.docker.io", "x").unwrap();
        assert_eq!(found, creds("husk", "pw"));
    }

    #[test]
    fn login_saves_beside_other_entries_and_logout_removes_every_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containers/auth.json");
        std::fs::create_dir(dir.path().join("containers")).unwrap();
        std::fs::write(
            &path,
            r#"{"auths": {"other.test": {"auth": "b3RoZXI6eA=="},
                "https://index.docker.io/v1/": {"auth": "b3RoZXI6eA=="}},
                "credHelpers": {"x.test": "pass"}}"#,
        )
        .unwrap();
        let husk = creds("husk", "pw:with:colons").unwrap();
        save(&path, "reg.test:5000", &husk).unwrap();
        save(&path, "docker.io", &husk).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let f = file(&std::fs::read_to_string(&path).unwrap());
        let at = |reg| from_file(&f, &path, reg, "app").unwrap();
        assert_eq!(at("reg.test:5000"), Some(husk.clone()));
        assert_eq!(at("other.test"), creds("other", "x"));
        assert_eq!(f.cred_helpers["x.test"], "pass");
        assert!(forget(&path, "docker.io").unwrap());
        let f = file(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(from_file(&f, &path, "index.docker.io", "x").unwrap(), None);
        assert!(
            !forget(&path, "docker.io").unwrap(),
            "nothing left to forget"
        );
        assert!(forget(&path, "reg.test:5000").unwrap());
        assert!(!forget(&dir.path().join("none.json"), "reg.test").unwrap());
        let f = file(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(f.auths.len(), 1, "other.test stays");
        assert!(!dir.path().join("containers/auth.json.husk-tmp").exists());
    }

    #[test]
    fn a_bad_entry_or_helper_is_an_error_naming_it() {
        let bad = file(r#"{"auths": {"reg.test": {"auth": "not base64!"}}}"#);
        let e = from_file(&bad, Path::new("/x/auth.json"), "reg.test", "a").unwrap_err();
        assert!(e.to_string().contains("/x/auth.json"), "{e}");
        let helper = file(r#"{"credHelpers": {"reg.test": "husk-test-no-such-helper"}}"#);
        let e = from_file(&helper, Path::new("f"), "reg.test", "a").unwrap_err();
        assert!(
            e.to_string()
                .contains("docker-credential-husk-test-no-such-helper"),
            "{e}"
        );
        assert!(from_file(&helper, Path::new("f"), "other.test", "a")
            .unwrap()
            .is_none());
    }
}
