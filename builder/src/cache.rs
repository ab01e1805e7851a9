//! Where husk keeps what it builds: `$HUSK_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/husk`, else `~/.cache/husk`.

use std::io;
use std::path::{Path, PathBuf};

/// The root of husk's cache.
pub fn root() -> io::Result<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("HUSK_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Ok(Path::new(&dir).join("husk"));
    }
    match var("HOME") {
        Some(home) => Ok(Path::new(&home).join(".cache/husk")),
        None => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "neither HUSK_CACHE_DIR, XDG_CACHE_HOME nor HOME is set",
        )),
    }
}

/// A temporary sibling name for `dest`, unique to this process, for writing
/// something completely before renaming it into place.
pub fn temp_sibling(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
