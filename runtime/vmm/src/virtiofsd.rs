//! virtiofsd, the virtio-fs project's own daemon: one per shared folder
//! (virtiofsd serves one folder) and one for all single files shared,
//! started by the husk process before the VMM is built (the VMM itself
//! never execs).
//!
//! husk binds a listening socket in a private folder, connects to it at
//! once (the connection waits in the backlog) and hands the listener to
//! virtiofsd with `--fd`, then removes the folder: there is no socket file
//! to find, race for or leave behind, and nothing to poll for readiness
//! (the VMM's first message is answered once virtiofsd has accepted).
//! virtiofsd serves one connection and quits when it closes, whichever way
//! husk ends (even `kill -9`); it is a [`Sidecar`], so it also gets
//! SIGKILL when the thread that started it dies, and its drop waits for it.
//!
//! virtiofsd sandboxes itself: as root in namespaces of its own with the
//! shared folder as its root (`--sandbox namespace`); as another user,
//! without namespaces it may not create, confined by its seccomp filter.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::sidecar::{as_root, find_program, Sidecar};

#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    #[error(
        "virtiofsd is not installed: it serves shared folders to VMs \
         (cargo install --locked virtiofsd, after apt-get install libcap-ng-dev \
         libseccomp-dev; or set HUSK_VIRTIOFSD to its path)"
    )]
    Missing,
    #[error("the shared folder {} does not exist", .0.display())]
    NoFolder(PathBuf),
    #[error("{} is not a folder: only folders can be shared", .0.display())]
    NotAFolder(PathBuf),
    #[error("cannot make the socket for virtiofsd")]
    Socket(#[source] io::Error),
    #[error("cannot start virtiofsd")]
    Spawn(#[source] io::Error),
    #[error("{} does not exist", .0.display())]
    NoFile(PathBuf),
    #[error("{} is a folder: share it as one", .0.display())]
    AFolder(PathBuf),
    #[error(
        "sharing single files needs root (each is bind-mounted into the folder \
         virtiofsd serves); share the folder that holds {} instead", .0.display()
    )]
    FilesNeedRoot(PathBuf),
    #[error("cannot make {FILES_STAGING}")]
    Staging(#[source] io::Error),
}

/// Where a virtiofsd that serves single files finds them: a tmpfs mounted
/// here in a mount namespace of its own, holding a bind mount of each
/// file. The folder itself stays empty on the host (it is made once and
/// shared by every VM); the namespace, the tmpfs and the bind mounts end
/// with that virtiofsd, however it ends.
pub const FILES_STAGING: &str = "/run/husk/files";

/// One host file served by [`Virtiofsd::start_files`], under its index
/// in the list as its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFile {
    pub host: PathBuf,
    pub readonly: bool,
}

/// How virtiofsd caches: `auto` lets the guest cache file data and
/// attributes for a second and revalidate on open (husk's default, measured
/// in README); `always` trusts the guest's cache (no one else writes the
/// folder); `never` sends every access to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cache {
    #[default]
    Auto,
    Always,
    Never,
}

impl std::str::FromStr for Cache {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Cache::Auto),
            "always" => Ok(Cache::Always),
            "never" => Ok(Cache::Never),
            _ => Err(format!("{s:?} is not a cache mode: auto, always or never")),
        }
    }
}

impl Cache {
    fn arg(self) -> &'static str {
        match self {
            Cache::Auto => "auto",
            Cache::Always => "always",
            Cache::Never => "never",
        }
    }
}

/// One shared folder as virtiofsd serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    pub folder: PathBuf,
    pub readonly: bool,
    pub cache: Cache,
}

/// A running virtiofsd, serving one folder to one VM; it ends (or is
/// ended) when this is dropped.
pub struct Virtiofsd {
    _process: Sidecar,
}

impl Virtiofsd {
    /// Starts virtiofsd for `share`. Returns it and the VMM's end of its
    /// vhost-user socket.
    pub fn start(share: &ShareSpec) -> Result<(Virtiofsd, UnixStream), VirtiofsdError> {
        check_folder(&share.folder)?;
        let binary = find_virtiofsd().ok_or(VirtiofsdError::Missing)?;
        let (listener, ours) = listening_pair().map_err(VirtiofsdError::Socket)?;
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--fd={fd}"))
            .arg("--shared-dir")
            .arg(&share.folder)
            .arg(format!("--cache={}", share.cache.arg()))
            .args(["--log-level=error", "--xattr"]);
        // As root, namespaces of its own (the folder is its root); other
        // users may not make them, and get virtiofsd's seccomp filter only.
        cmd.arg(if as_root() {
            "--sandbox=namespace"
        } else {
            "--sandbox=none"
        });
        if share.readonly {
            cmd.arg("--readonly");
        }
        // It speaks only of errors: straight to the user.
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let daemon = Sidecar::spawn(&mut cmd, fd).map_err(VirtiofsdError::Spawn)?;
        drop(listener);
        Ok((Virtiofsd { _process: daemon }, ours))
    }

    /// Starts one virtiofsd serving single host files (`docker run -v
    /// FILE:PATH`): file `i` of `files` is `i` in the share's root, a
    /// bind mount of the host file (read-only if asked), so what either
    /// side writes the other sees, as with a folder. Root only.
    pub fn start_files(
        files: &[SharedFile],
        cache: Cache,
    ) -> Result<(Virtiofsd, UnixStream), VirtiofsdError> {
        for f in files {
            match std::fs::metadata(&f.host) {
                Ok(m) if m.is_dir() => return Err(VirtiofsdError::AFolder(f.host.clone())),
                Ok(_) => {}
                Err(_) => return Err(VirtiofsdError::NoFile(f.host.clone())),
            }
        }
        if let (false, Some(f)) = (as_root(), files.first()) {
            return Err(VirtiofsdError::FilesNeedRoot(f.host.clone()));
        }
        let binary = find_virtiofsd().ok_or(VirtiofsdError::Missing)?;
        std::fs::create_dir_all(FILES_STAGING).map_err(VirtiofsdError::Staging)?;
        let staging = cstring(Path::new(FILES_STAGING));
        let binds: Vec<(CString, CString, bool)> = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let target = Path::new(FILES_STAGING).join(i.to_string());
                (cstring(&f.host), cstring(&target), f.readonly)
            })
            .collect();
        let (listener, ours) = listening_pair().map_err(VirtiofsdError::Socket)?;
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--fd={fd}"))
            .args(["--shared-dir", FILES_STAGING])
            .arg(format!("--cache={}", cache.arg()))
            .args(["--log-level=error", "--xattr", "--sandbox=namespace"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        // SAFETY: between fork and exec the closure makes only
        // async-signal-safe system calls (unshare, mount, open, close) with
        // NUL-terminated strings made before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || stage_files(&staging, &binds));
        }
        let daemon = Sidecar::spawn(&mut cmd, fd).map_err(VirtiofsdError::Spawn)?;
        drop(listener);
        Ok((Virtiofsd { _process: daemon }, ours))
    }
}

fn cstring(path: &Path) -> CString {
    use std::os::unix::ffi::OsStrExt;
    // A path from the OS or made of digits holds no NUL byte.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// In virtiofsd's child before exec: a mount namespace of its own (its
/// mounts do not reach the host's), a tmpfs on the staging folder and a
/// bind mount of each file onto an empty file made there.
///
/// # Safety
/// Only for a forked child: it changes the calling process's mounts.
unsafe fn stage_files(staging: &CString, binds: &[(CString, CString, bool)]) -> io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    let null = std::ptr::null();
    // SAFETY: every pointer is null, a literal or one of the caller's
    // NUL-terminated strings, alive for the whole block; the calls only
    // read them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_SLAVE,
            null.cast(),
        ))?;
        check(libc::mount(
            c"tmpfs".as_ptr(),
            staging.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=0755,size=64k".as_ptr().cast(),
        ))?;
        for (source, target, readonly) in binds {
            let fd = check(libc::open(
                target.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            ))?;
            libc::close(fd);
            check(libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                null,
                libc::MS_BIND,
                null.cast(),
            ))?;
            if *readonly {
                check(libc::mount(
                    null,
                    target.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    null.cast(),
                ))?;
            }
        }
    }
    Ok(())
}

fn check_folder(folder: &Path) -> Result<(), VirtiofsdError> {
    match std::fs::metadata(folder) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(VirtiofsdError::NotAFolder(folder.into())),
        Err(_) => Err(VirtiofsdError::NoFolder(folder.into())),
    }
}

/// A listening socket and a connection to it, waiting in its backlog; the
/// socket's file is gone by the time this returns.
fn listening_pair() -> io::Result<(OwnedFd, UnixStream)> {
    let dir = tempfile::Builder::new().prefix("husk-fs-").tempdir()?;
    let path = dir.path().join("socket");
    let listener = UnixListener::bind(&path)?;
    let ours = UnixStream::connect(&path)?;
    dir.close()?;
    Ok((listener.into(), ours))
}

/// `$HUSK_VIRTIOFSD`, else `virtiofsd` on `PATH`, in Cargo's folder (where
/// `cargo install` puts it) or where distributions do.
pub fn find_virtiofsd() -> Option<PathBuf> {
    let cargo = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    let mut elsewhere: Vec<PathBuf> = cargo.map(|c| c.join("bin/virtiofsd")).into_iter().collect();
    elsewhere.extend(["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"].map(PathBuf::from));
    find_program("HUSK_VIRTIOFSD", "virtiofsd", &elsewhere)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn a_missing_or_plain_file_folder_is_refused_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let missing = ShareSpec {
            folder: dir.path().join("nope"),
            readonly: false,
            cache: Cache::Auto,
        };
        let e = Virtiofsd::start(&missing).err().unwrap();
        assert!(matches!(e, VirtiofsdError::NoFolder(_)), "{e}");
        assert!(e.to_string().contains("nope"), "{e}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let e = Virtiofsd::start(&ShareSpec {
            folder: file,
            ..missing
        })
        .err()
        .unwrap();
        assert!(matches!(e, VirtiofsdError::NotAFolder(_)), "{e}");
    }

    #[test]
    fn single_files_that_are_missing_or_folders_are_refused_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let file = |host: PathBuf| SharedFile {
            host,
            readonly: true,
        };
        let e = Virtiofsd::start_files(&[file(dir.path().join("nope"))], Cache::Auto)
            .err()
            .unwrap();
        assert!(matches!(e, VirtiofsdError::NoFile(_)), "{e}");
        let e = Virtiofsd::start_files(&[file(dir.path().to_path_buf())], Cache::Auto)
            .err()
            .unwrap();
        assert!(matches!(e, VirtiofsdError::AFolder(_)), "{e}");
        assert!(e.to_string().contains("share it as one"), "{e}");
    }

    #[test]
    fn the_listening_pair_is_connected_and_leaves_no_file() {
        let (listener, mut ours) = listening_pair().unwrap();
        let listener = UnixListener::from(listener);
        let name = listener.local_addr().unwrap();
        let path = name.as_pathname().unwrap().to_owned();
        assert!(!path.exists(), "{} was left behind", path.display());
        assert!(!path.parent().unwrap().exists());
        let (mut theirs, _) = listener.accept().unwrap();
        ours.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
    }
}
