//! The staging root: a host folder that becomes the image's `/`.
//!
//! Every path is resolved by the kernel *inside* the root
//! (`openat2(RESOLVE_IN_ROOT)`): `..` stops at the root and an absolute
//! symlink means the root's own `/`, so a layer's symlink pointing out of
//! the image, followed by an entry beneath it, still lands inside. Paths
//! that climb out with `..` are refused before that.
//!
//! Without root the builder cannot chown; it remembers each owner by
//! inode instead, and the image writers apply them.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags, CWD,
};
use rustix::process::{Gid, Uid};

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("{0}: the path climbs out of the root filesystem with ..")]
    Escapes(PathBuf),
    #[error("{path}: {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}: a hard link to something that does not exist (or a directory)")]
    BadHardLink(PathBuf),
}

fn io_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(rustix::io::Errno) -> RootError + 'a {
    move |e| RootError::Io {
        path: path.to_path_buf(),
        op,
        source: e.into(),
    }
}

/// Ownership, permissions and time of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch; access time is set to the same.
    pub mtime: i64,
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Meta {
    /// Root-owned, dated at the epoch: what the builder adds itself.
    pub fn root(mode: u32) -> Self {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        }
    }
}

/// `path` made relative to the root and free of `.`/`..`; refused if it
/// climbs above the root. The root itself is the empty path.
pub fn clean(path: &Path) -> Result<PathBuf, RootError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(RootError::Escapes(path.to_path_buf()));
                }
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Ok(out)
}

/// The staging root folder and what the writers must know about it.
pub struct Root {
    path: PathBuf,
    fd: OwnedFd,
    privileged: bool,
    /// Owners the builder could not set (not root), by inode.
    owners: HashMap<u64, (u32, u32)>,
    /// Directory times, by inode: restored by [`Root::finish`] after later
    /// entries changed them.
    dir_mtimes: HashMap<u64, i64>,
}

/// Access and modification times both at `secs` (whole seconds, as layers
/// and images keep them).
fn at(secs: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Root {
    /// Opens `path`, an empty folder, as the root.
    pub fn open(path: &Path) -> Result<Self, RootError> {
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err(path, "cannot open the staging folder"))?;
        Ok(Root {
            path: path.to_path_buf(),
            fd,
            privileged: rustix::process::geteuid().is_root(),
            owners: HashMap::new(),
            dir_mtimes: HashMap::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The owner an inode gets in the image, given what the staging folder
    /// holds (`stat_uid`, `stat_gid`).
    pub fn owner(&self, ino: u64, stat_uid: u32, stat_gid: u32) -> (u32, u32) {
        if self.privileged {
            (stat_uid, stat_gid)
        } else {
            self.owners.get(&ino).copied().unwrap_or((0, 0))
        }
    }

    fn open_in_root(&self, rel: &Path) -> rustix::io::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// The folder `rel` (already clean), made with its parents if missing
    /// and `create` is set; `None` if missing and not `create`.
    pub fn dir(&mut self, rel: &Path, create: bool) -> Result<Option<OwnedFd>, RootError> {
        match self.open_in_root(rel) {
            Ok(fd) => return Ok(Some(fd)),
            Err(rustix::io::Errno::NOENT) if create => {}
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(io_err(rel, "cannot open folder")(e)),
        }
        let mut prefix = PathBuf::new();
        let mut parent = self
            .open_in_root(&prefix)
            .map_err(io_err(rel, "cannot open the root"))?;
        for c in rel.components() {
            prefix.push(c);
            parent = match self.open_in_root(&prefix) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => {
                    rustix::fs::mkdirat(&parent, c.as_os_str(), Mode::from_raw_mode(0o755))
                        .map_err(io_err(&prefix, "cannot create folder"))?;
                    self.open_in_root(&prefix)
                        .map_err(io_err(&prefix, "cannot open folder"))?
                }
                Err(e) => return Err(io_err(&prefix, "cannot open folder")(e)),
            };
        }
        Ok(Some(parent))
    }

    /// The parent folder of `rel` (made if missing) and the entry's name.
    fn parent(&mut self, rel: &Path) -> Result<(OwnedFd, OsString), RootError> {
        let name = rel
            .file_name()
            .ok_or_else(|| RootError::Escapes(rel.to_path_buf()))?
            .to_os_string();
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fd = self.dir(parent, true)?.expect("created");
        Ok((fd, name))
    }

    /// Removes `name` in `dir`, a whole tree if it is a folder. Returns
    /// whether something was there.
    fn remove(&self, dir: &OwnedFd, name: &OsStr, rel: &Path) -> Result<bool, RootError> {
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(e) => return Err(io_err(rel, "cannot stat")(e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            // The folder's real place (its parent was resolved in the root);
            // remove_dir_all never follows symlinks.
            let real = real_path(dir, rel)?.join(name);
            std::fs::remove_dir_all(&real).map_err(|e| RootError::Io {
                path: rel.to_path_buf(),
                op: "cannot remove folder",
                source: e,
            })?;
        } else {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())
                .map_err(io_err(rel, "cannot remove"))?;
        }
        Ok(true)
    }

    /// Sets owner, permissions and times of `name` in `dir`.
    fn apply(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        meta: &Meta,
        symlink: bool,
    ) -> Result<(), RootError> {
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err(rel, "cannot stat"))?;
        if self.privileged {
            rustix::fs::chownat(
                dir,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io_err(rel, "cannot set owner"))?;
        } else {
            self.owners.insert(st.st_ino, (meta.uid, meta.gid));
        }
        if !symlink {
            rustix::fs::chmodat(
                dir,
                name,
                Mode::from_raw_mode(meta.mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(io_err(rel, "cannot set mode"))?;
        }
        rustix::fs::utimensat(dir, name, &at(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err(rel, "cannot set times"))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            self.dir_mtimes.insert(st.st_ino, meta.mtime);
        }
        Ok(())
    }

    fn set_xattrs(fd: &OwnedFd, rel: &Path, meta: &Meta) -> Result<(), RootError> {
        for (name, value) in &meta.xattrs {
            rustix::fs::fsetxattr(fd, name.as_os_str(), value, XattrFlags::empty())
                .map_err(io_err(rel, "cannot set extended attribute"))?;
        }
        Ok(())
    }

    /// A folder at `rel`; an existing folder is kept (its contents too)
    /// and only gets `meta`.
    pub fn make_dir(&mut self, rel: &Path, meta: &Meta) -> Result<(), RootError> {
        if rel.as_os_str().is_empty() {
            let fd = self.open_in_root(rel).map_err(io_err(rel, "cannot open"))?;
            return self.apply(&fd, OsStr::new("."), rel, meta, false);
        }
        let (dir, name) = self.parent(rel)?;
        let st = rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW).ok();
        if !st.is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory) {
            self.remove(&dir, &name, rel)?;
            rustix::fs::mkdirat(&dir, &name, Mode::from_raw_mode(0o700))
                .map_err(io_err(rel, "cannot create folder"))?;
        }
        if !meta.xattrs.is_empty() {
            let fd = self.open_in_root(rel).map_err(io_err(rel, "cannot open"))?;
            Self::set_xattrs(&fd, rel, meta)?;
        }
        self.apply(&dir, &name, rel, meta, false)
    }

    /// A regular file at `rel` with `content`, replacing what was there.
    pub fn write_file(
        &mut self,
        rel: &Path,
        content: &mut dyn Read,
        meta: &Meta,
    ) -> Result<u64, RootError> {
        let (dir, name) = self.parent(rel)?;
        self.remove(&dir, &name, rel)?;
        let fd = rustix::fs::openat(
            &dir,
            &name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io_err(rel, "cannot create file"))?;
        let mut file = File::from(fd);
        let n = io::copy(content, &mut file).map_err(|e| RootError::Io {
            path: rel.to_path_buf(),
            op: "cannot write file",
            source: e,
        })?;
        Self::set_xattrs(&OwnedFd::from(file), rel, meta)?;
        self.apply(&dir, &name, rel, meta, false)?;
        Ok(n)
    }

    /// A symlink at `rel` pointing at `target` (stored as given).
    pub fn symlink(&mut self, rel: &Path, target: &Path, meta: &Meta) -> Result<(), RootError> {
        let (dir, name) = self.parent(rel)?;
        self.remove(&dir, &name, rel)?;
        rustix::fs::symlinkat(target, &dir, &name).map_err(io_err(rel, "cannot create symlink"))?;
        self.apply(&dir, &name, rel, meta, true)
    }

    /// A hard link at `rel` to the existing entry `target` (clean, in the
    /// root); never to a folder.
    pub fn hard_link(&mut self, rel: &Path, target: &Path) -> Result<(), RootError> {
        let target_name = target
            .file_name()
            .ok_or_else(|| RootError::BadHardLink(target.to_path_buf()))?;
        let target_dir = self
            .dir(target.parent().unwrap_or(Path::new("")), false)?
            .ok_or_else(|| RootError::BadHardLink(target.to_path_buf()))?;
        match rustix::fs::statat(&target_dir, target_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {}
            _ => return Err(RootError::BadHardLink(target.to_path_buf())),
        }
        let (dir, name) = self.parent(rel)?;
        self.remove(&dir, &name, rel)?;
        rustix::fs::linkat(&target_dir, target_name, &dir, &name, AtFlags::empty())
            .map_err(io_err(rel, "cannot create hard link"))
    }

    /// A named pipe at `rel`.
    pub fn fifo(&mut self, rel: &Path, meta: &Meta) -> Result<(), RootError> {
        let (dir, name) = self.parent(rel)?;
        self.remove(&dir, &name, rel)?;
        rustix::fs::mknodat(&dir, &name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
            .map_err(io_err(rel, "cannot create fifo"))?;
        self.apply(&dir, &name, rel, meta, false)
    }

    /// Removes `rel` if it exists (a whiteout).
    pub fn remove_path(&mut self, rel: &Path) -> Result<bool, RootError> {
        let Some(name) = rel.file_name() else {
            return Ok(false);
        };
        match self.dir(rel.parent().unwrap_or(Path::new("")), false)? {
            Some(dir) => self.remove(&dir, name, rel),
            None => Ok(false),
        }
    }

    /// Empties folder `rel` of everything `keep` does not name (an opaque
    /// folder hides what lower layers put there).
    pub fn clear_dir(&mut self, rel: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<(), RootError> {
        let Some(dir) = self.dir(rel, false)? else {
            return Ok(());
        };
        let real = real_path(&dir, rel)?;
        let entries = std::fs::read_dir(&real).map_err(|e| RootError::Io {
            path: rel.to_path_buf(),
            op: "cannot list folder",
            source: e,
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| RootError::Io {
                path: rel.to_path_buf(),
                op: "cannot list folder",
                source: e,
            })?;
            let child = rel.join(entry.file_name());
            if !keep(&child) {
                self.remove(&dir, &entry.file_name(), &child)?;
            }
        }
        Ok(())
    }

    /// Puts back every folder's own time (adding entries changed them);
    /// folders nobody dated get the epoch. Call once, when staging is done.
    pub fn finish(&self) -> Result<(), RootError> {
        let mut dirs = Vec::new();
        collect_dirs(&self.path, &mut dirs).map_err(|e| RootError::Io {
            path: self.path.clone(),
            op: "cannot walk the staging folder",
            source: e,
        })?;
        // Deepest first; a folder's time does not change when a child's does.
        for (path, ino) in dirs.iter().rev() {
            let mtime = self.dir_mtimes.get(ino).copied().unwrap_or(0);
            rustix::fs::utimensat(CWD, path, &at(mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io_err(path, "cannot set times"))?;
        }
        Ok(())
    }
}

/// Where the folder open as `dir` (found for `rel`) really is on the host.
fn real_path(dir: &OwnedFd, rel: &Path) -> Result<PathBuf, RootError> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd())).map_err(|e| {
        RootError::Io {
            path: rel.to_path_buf(),
            op: "cannot locate folder",
            source: e,
        }
    })
}

fn collect_dirs(dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> io::Result<()> {
    out.push((dir.to_path_buf(), std::fs::symlink_metadata(dir)?.ino()));
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            collect_dirs(&entry.path(), out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths_stay_inside() {
        assert_eq!(clean(Path::new("/a/./b/../c")).unwrap(), Path::new("a/c"));
        assert_eq!(clean(Path::new("./")).unwrap(), Path::new(""));
        assert!(matches!(
            clean(Path::new("a/../../etc")),
            Err(RootError::Escapes(_))
        ));
    }

    #[test]
    fn symlinked_parents_resolve_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let staging = tempfile::tempdir().unwrap();
        let mut root = Root::open(staging.path()).unwrap();
        let m = Meta::root(0o644);
        // An absolute link and a climbing link, both aimed at the host.
        root.symlink(Path::new("abs"), outside.path(), &m).unwrap();
        root.symlink(Path::new("rel"), Path::new("../../../../../../tmp"), &m)
            .unwrap();
        // The links' targets exist inside the root as well as outside.
        let inside = clean(outside.path()).unwrap();
        root.make_dir(&inside, &m).unwrap();
        root.make_dir(Path::new("tmp"), &m).unwrap();
        root.write_file(Path::new("abs/x"), &mut &b"1"[..], &m)
            .unwrap();
        root.write_file(Path::new("rel/y"), &mut &b"2"[..], &m)
            .unwrap();
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert_eq!(
            std::fs::read(staging.path().join(inside).join("x")).unwrap(),
            b"1"
        );
        assert_eq!(std::fs::read(staging.path().join("tmp/y")).unwrap(), b"2");
    }

    #[test]
    fn hard_links_stay_inside_and_refuse_folders() {
        let staging = tempfile::tempdir().unwrap();
        let mut root = Root::open(staging.path()).unwrap();
        let m = Meta::root(0o644);
        root.write_file(Path::new("etc/passwd"), &mut &b"in"[..], &m)
            .unwrap();
        // A link "to /etc/passwd" means the image's own.
        root.hard_link(Path::new("l"), &clean(Path::new("/etc/passwd")).unwrap())
            .unwrap();
        let a = std::fs::metadata(staging.path().join("l")).unwrap();
        let b = std::fs::metadata(staging.path().join("etc/passwd")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert!(matches!(
            root.hard_link(Path::new("d"), Path::new("etc")),
            Err(RootError::BadHardLink(_))
        ));
        assert!(matches!(
            root.hard_link(Path::new("d"), Path::new("missing")),
            Err(RootError::BadHardLink(_))
        ));
    }

    #[test]
    fn replacing_and_clearing() {
        let staging = tempfile::tempdir().unwrap();
        let mut root = Root::open(staging.path()).unwrap();
        let m = Meta::root(0o755);
        root.make_dir(Path::new("d/sub"), &m).unwrap();
        root.write_file(Path::new("d/sub/f"), &mut &b"x"[..], &m)
            .unwrap();
        root.write_file(Path::new("d/keep"), &mut &b"x"[..], &m)
            .unwrap();
        // A file replaces a folder tree.
        root.write_file(Path::new("d/sub"), &mut &b"now a file"[..], &m)
            .unwrap();
        assert!(staging.path().join("d/sub").is_file());
        root.clear_dir(Path::new("d"), &|p| p == Path::new("d/keep"))
            .unwrap();
        let left: Vec<_> = std::fs::read_dir(staging.path().join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["keep"]);
        assert!(root.remove_path(Path::new("d/keep")).unwrap());
        assert!(!root.remove_path(Path::new("d/keep")).unwrap());
    }

    #[test]
    fn finish_restores_folder_times() {
        let staging = tempfile::tempdir().unwrap();
        let mut root = Root::open(staging.path()).unwrap();
        let mut m = Meta::root(0o755);
        m.mtime = 1_000_000;
        root.make_dir(Path::new("d"), &m).unwrap();
        root.write_file(Path::new("d/f"), &mut &b"x"[..], &Meta::root(0o644))
            .unwrap();
        root.finish().unwrap();
        let md = std::fs::metadata(staging.path().join("d")).unwrap();
        assert_eq!(md.mtime(), 1_000_000);
        assert_eq!(std::fs::metadata(staging.path()).unwrap().mtime(), 0);
    }
}
