//! `husk cp`'s archives: both ends of a copy pack and unpack here, the
//! guest's init for its side and `husk cp` for the host's.
//!
//! An archive is a tar stream. Its top is one entry named by the source's
//! last component (a file, a symbolic link, or a folder with everything
//! under it), or, for a source written `DIR/.`, what the folder holds.
//! Unpacking follows `docker cp`'s rules for the destination:
//!
//! | source | destination | result |
//! |---|---|---|
//! | file | an existing folder | `DEST/NAME` |
//! | file | an existing file, or nothing (its folder exists) | `DEST` |
//! | file | nothing, written with a trailing `/` | an error |
//! | folder | an existing folder | `DEST/NAME` |
//! | folder | nothing (its folder exists) | `DEST`, made |
//! | folder | an existing file | an error |
//! | `DIR/.` | a folder, made if it is not there | what `DIR` holds, in `DEST` |
//!
//! Nothing lands outside where the copy goes: an entry that climbs out
//! (`..`, an absolute path, or through a symbolic link the archive made)
//! is refused. Hard links, devices, FIFOs and sockets are not copied: an
//! archive from the other side may be hostile.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}: no such file or folder")]
    Missing(String),
    #[error("{0}: cannot copy a folder onto a file")]
    FolderOntoFile(String),
    #[error("{0}: no such folder (a destination ending in / must be one)")]
    NotAFolder(String),
    #[error("{path}: {kind} are not copied")]
    Unsupported { path: String, kind: &'static str },
    #[error("{0}: the entry would land outside the destination")]
    Outside(String),
    #[error("{path}: cannot replace {what}")]
    Mismatch { path: String, what: &'static str },
    #[error("the archive is empty")]
    Empty,
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Whether a source as written names what a folder holds (`DIR/.`).
pub fn is_contents(source: &str) -> bool {
    source == "." || source.ends_with("/.")
}

/// Writes the archive of `src` to `out` (see the module's words);
/// symbolic links are archived as links, never followed.
pub fn pack(src: &Path, contents: bool, out: impl Write) -> Result<(), CopyError> {
    let meta = fs::symlink_metadata(src).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => CopyError::Missing(src.display().to_string()),
        _ => io_at(src)(e),
    })?;
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    if contents {
        if !meta.is_dir() {
            return Err(CopyError::NotAFolder(src.display().to_string()));
        }
        for entry in fs::read_dir(src).map_err(io_at(src))? {
            let entry = entry.map_err(io_at(src))?;
            append(&mut tar, &entry.path(), Path::new(&entry.file_name()))?;
        }
    } else {
        let name = src
            .file_name()
            .map_or_else(|| PathBuf::from("root"), PathBuf::from);
        append(&mut tar, src, &name)?;
    }
    tar.into_inner()
        .map_err(io_at(src))?
        .flush()
        .map_err(io_at(src))
}

/// One file, link or folder (with what it holds) as `name`.
fn append<W: Write>(tar: &mut tar::Builder<W>, path: &Path, name: &Path) -> Result<(), CopyError> {
    let meta = fs::symlink_metadata(path).map_err(io_at(path))?;
    let kind = meta.file_type();
    if kind.is_dir() {
        tar.append_dir(name, path).map_err(io_at(path))?;
        let mut entries: Vec<_> = fs::read_dir(path)
            .map_err(io_at(path))?
            .collect::<Result<_, _>>()
            .map_err(io_at(path))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            append(tar, &e.path(), &name.join(e.file_name()))?;
        }
        Ok(())
    } else if kind.is_file() || kind.is_symlink() {
        tar.append_path_with_name(path, name).map_err(io_at(path))
    } else {
        Err(CopyError::Unsupported {
            path: path.display().to_string(),
            kind: "devices, FIFOs and sockets",
        })
    }
}

/// How an archive's files are made.
#[derive(Debug, Clone, Copy)]
pub struct Unpack {
    /// Keep the archive's owners (root's side, `-a`); else what this
    /// process makes is its own.
    pub owners: bool,
    /// Keep set-user-ID, set-group-ID and sticky bits (else cleared).
    pub special_bits: bool,
}

/// Unpacks `archive` at `dest` (as written: a trailing `/` says it must
/// be a folder) by `docker cp`'s rules; `contents` says the archive holds
/// what a folder held rather than one top entry.
pub fn unpack(
    archive: impl Read,
    dest: &str,
    contents: bool,
    how: Unpack,
) -> Result<(), CopyError> {
    let path = Path::new(dest);
    let existing = fs::metadata(path).ok();
    let mut archive = tar::Archive::new(archive);
    let mut entries = archive.entries().map_err(io_at(path))?.peekable();
    // Where the entries go, and what the top entry is called there.
    let (base, rename) = if contents {
        if existing.is_none() {
            fs::create_dir(path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => CopyError::Missing(parent_of(path)),
                _ => io_at(path)(e),
            })?;
        } else if !existing.as_ref().is_some_and(fs::Metadata::is_dir) {
            return Err(CopyError::NotAFolder(dest.to_string()));
        }
        (path.to_path_buf(), None)
    } else {
        let first = match entries.peek() {
            None => return Err(CopyError::Empty),
            Some(Ok(e)) => e.header().entry_type(),
            Some(Err(_)) => {
                let e = entries
                    .next()
                    .and_then(Result::err)
                    .expect("peeked an error");
                return Err(io_at(path)(e));
            }
        };
        match existing {
            Some(m) if m.is_dir() => (path.to_path_buf(), None),
            Some(_) if first.is_dir() => return Err(CopyError::FolderOntoFile(dest.to_string())),
            _ if dest.ends_with('/') && !first.is_dir() => {
                return Err(CopyError::NotAFolder(dest.to_string()))
            }
            _ => {
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                if !parent.is_dir() {
                    return Err(CopyError::Missing(parent.display().to_string()));
                }
                let name = path
                    .file_name()
                    .ok_or_else(|| CopyError::NotAFolder(dest.to_string()))?;
                (parent, Some(PathBuf::from(name)))
            }
        }
    };
    let root = base.canonicalize().map_err(io_at(&base))?;
    // Folders get their modes last: a read-only one is still filled.
    let mut folders = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(io_at(&base))?;
        let name = entry.path().map_err(io_at(&base))?.into_owned();
        let Some(relative) = inside_archive(&name, rename.as_deref()) else {
            return Err(CopyError::Outside(name.display().to_string()));
        };
        if relative.as_os_str().is_empty() {
            // The folder's own entry in a `DIR/.` archive: DEST itself.
            continue;
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            return Err(CopyError::Unsupported {
                path: name.display().to_string(),
                kind: "hard links, devices, FIFOs and sockets",
            });
        }
        let target = root.join(&relative);
        make_parents(&root, &target).map_err(|e| match e {
            Some(e) => io_at(&target)(e),
            None => CopyError::Outside(name.display().to_string()),
        })?;
        if let Ok(old) = fs::symlink_metadata(&target) {
            // A file or link is replaced, a folder merged into; one kind
            // never replaces the other (as docker refuses it).
            match (old.is_dir(), kind.is_dir()) {
                (true, true) => {}
                (false, false) => fs::remove_file(&target).map_err(io_at(&target))?,
                (true, false) => {
                    return Err(CopyError::Mismatch {
                        path: target.display().to_string(),
                        what: "a folder with a file",
                    })
                }
                (false, true) => {
                    return Err(CopyError::Mismatch {
                        path: target.display().to_string(),
                        what: "a file with a folder",
                    })
                }
            }
        }
        entry.set_preserve_mtime(true);
        entry.set_unpack_xattrs(false);
        entry.set_preserve_permissions(false);
        entry.unpack(&target).map_err(io_at(&target))?;
        let keep = if how.special_bits { 0o7777 } else { 0o777 };
        let mode = entry.header().mode().map_err(io_at(&target))? & keep;
        if kind.is_dir() {
            folders.push((target.clone(), mode));
        } else if !kind.is_symlink() {
            set_mode(&target, mode)?;
        }
        if how.owners {
            let (uid, gid) = (entry.header().uid(), entry.header().gid());
            if let (Ok(uid), Ok(gid)) = (uid, gid) {
                std::os::unix::fs::lchown(&target, Some(uid as u32), Some(gid as u32))
                    .map_err(io_at(&target))?;
            }
        }
    }
    for (folder, mode) in folders.iter().rev() {
        set_mode(folder, *mode)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CopyError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_at(path))
}

/// An entry's path below the destination (its first component renamed
/// to `rename`, if given), or `None` if it would climb out.
fn inside_archive(name: &Path, rename: Option<&Path>) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for (i, c) in name
        .components()
        .filter(|c| *c != Component::CurDir)
        .enumerate()
    {
        match c {
            Component::Normal(part) => match (i, rename) {
                (0, Some(new)) => out.push(new),
                _ => out.push(part),
            },
            _ => return None,
        }
    }
    Some(out)
}

/// Makes the folders above `target` that are missing; each one that is
/// there must resolve inside `root` (`Err(None)` if one does not: a link
/// the archive made, pointing away).
fn make_parents(root: &Path, target: &Path) -> Result<(), Option<io::Error>> {
    let Some(parent) = target.parent() else {
        return Ok(());
    };
    let mut at = root.to_path_buf();
    for part in parent.strip_prefix(root).map_err(|_| None)?.components() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(_) => {
                let real = at.canonicalize().map_err(Some)?;
                if !real.starts_with(root) || !real.is_dir() {
                    return Err(None);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&at).map_err(Some)?,
            Err(e) => return Err(Some(e)),
        }
    }
    Ok(())
}

fn parent_of(path: &Path) -> String {
    path.parent()
        .map_or_else(|| ".".into(), |p| p.display().to_string())
}

#[cfg(test)]
mod tests;
