//! Reading a built image back: its format, run configuration and files
//! (`husk inspect`, and the golden tests). ext4 images are read with
//! `debugfs`, initramfs images with the builder's own cpio reader.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use appliance_spec::ImageFormat;
use husk_init::config::{RunConfig, CONFIG_PATH};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{0}: cannot read")]
    Io(String, #[source] std::io::Error),
    #[error("{0}: neither an ext4 image nor an initramfs")]
    UnknownFormat(String),
    #[error("{0}: debugfs failed: {1}")]
    Debugfs(String, String),
    #[error("{0}: no {CONFIG_PATH}; not an image built by husk")]
    NoConfig(String),
    #[error("{0}: {CONFIG_PATH}")]
    Config(String, #[source] husk_init::config::ConfigError),
}

/// One file in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Absolute, e.g. `/bin/sh`.
    pub path: String,
    /// Type and permission bits, as `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

impl FileInfo {
    /// `ls -l` style type and permissions, e.g. `drwxr-xr-x`.
    pub fn mode_string(&self) -> String {
        let kind = match self.mode & 0o170000 {
            0o040000 => 'd',
            0o120000 => 'l',
            0o020000 => 'c',
            0o060000 => 'b',
            0o010000 => 'p',
            0o140000 => 's',
            _ => '-',
        };
        let mut s = String::from(kind);
        let m = self.mode;
        for (i, c) in "rwxrwxrwx".chars().enumerate() {
            let bit = 0o400 >> i;
            let special = match i {
                2 if m & 0o4000 != 0 => Some('s'),
                5 if m & 0o2000 != 0 => Some('s'),
                8 if m & 0o1000 != 0 => Some('t'),
                _ => None,
            };
            s.push(match (m & bit != 0, special) {
                (true, Some(sp)) => sp,
                (false, Some(sp)) => sp.to_ascii_uppercase(),
                (true, None) => c,
                (false, None) => '-',
            });
        }
        s
    }
}

fn name(path: &Path) -> String {
    path.display().to_string()
}

/// The image's format, from its first bytes.
pub fn format_of(image: &Path) -> Result<ImageFormat, InspectError> {
    let mut head = vec![0u8; 1084];
    let mut f = std::fs::File::open(image).map_err(|e| InspectError::Io(name(image), e))?;
    let n = f
        .read(&mut head)
        .map_err(|e| InspectError::Io(name(image), e))?;
    let head = &head[..n];
    if head.starts_with(&[0x1f, 0x8b]) || head.starts_with(b"070701") {
        Ok(ImageFormat::Initramfs)
    } else if head.get(1080..1082) == Some(&[0x53, 0xef]) {
        Ok(ImageFormat::Ext4)
    } else {
        Err(InspectError::UnknownFormat(name(image)))
    }
}

fn debugfs(image: &Path, script: &str) -> Result<String, InspectError> {
    let mut cmd = Command::new("debugfs");
    cmd.args(["-f", "-"]).arg(image);
    let out = crate::image::output_with_input(&mut cmd, Some(script.as_bytes()))
        .map_err(|e| InspectError::Io(name(image), e))?;
    if !out.status.success() {
        return Err(InspectError::Debugfs(
            name(image),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The run configuration baked into the image.
pub fn run_config(image: &Path) -> Result<RunConfig, InspectError> {
    let bytes = match format_of(image)? {
        ImageFormat::Initramfs => crate::image::initramfs_read_file(image, Some(&CONFIG_PATH[1..]))
            .map_err(|e| InspectError::Io(name(image), e))?
            .into_iter()
            .find_map(|e| e.data)
            .ok_or_else(|| InspectError::NoConfig(name(image)))?,
        ImageFormat::Ext4 => {
            let out = debugfs(image, &format!("cat {CONFIG_PATH}\n"))?;
            let json: String = out
                .lines()
                .filter(|l| !l.starts_with("debugfs:"))
                .collect::<Vec<_>>()
                .join("\n");
            if json.trim().is_empty() {
                return Err(InspectError::NoConfig(name(image)));
            }
            json.into_bytes()
        }
    };
    RunConfig::from_json(&bytes).map_err(|e| InspectError::Config(name(image), e))
}

/// Every file in the image, in path order.
pub fn files(image: &Path) -> Result<Vec<FileInfo>, InspectError> {
    let mut all = match format_of(image)? {
        ImageFormat::Initramfs => crate::image::initramfs_read_file(image, None)
            .map_err(|e| InspectError::Io(name(image), e))?
            .into_iter()
            .map(|e| FileInfo {
                path: format!("/{}", e.name),
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                size: e.size,
            })
            .collect(),
        ImageFormat::Ext4 => ext4_files(image)?,
    };
    all.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(all)
}

/// Lists an ext4 image with one `debugfs` session per folder depth.
fn ext4_files(image: &Path) -> Result<Vec<FileInfo>, InspectError> {
    let mut all = Vec::new();
    let mut level = vec![String::from("/")];
    while !level.is_empty() {
        let script: String = level.iter().map(|d| format!("ls -p \"{d}\"\n")).collect();
        let out = debugfs(image, &script)?;
        let mut next = Vec::new();
        let mut dir = String::new();
        for line in out.lines() {
            if let Some(cmd) = line.strip_prefix("debugfs: ls -p ") {
                dir = cmd.trim_matches('"').to_string();
                continue;
            }
            // /ino/mode/uid/gid/name/size/
            let f: Vec<&str> = line.split('/').collect();
            if f.len() < 7 || f[5] == "." || f[5] == ".." {
                continue;
            }
            let path = if dir == "/" {
                format!("/{}", f[5])
            } else {
                format!("{dir}/{}", f[5])
            };
            let mode = u32::from_str_radix(f[2], 8).unwrap_or(0);
            if mode & 0o170000 == 0o040000 {
                next.push(path.clone());
            }
            all.push(FileInfo {
                path,
                mode,
                uid: f[3].parse().unwrap_or(0),
                gid: f[4].parse().unwrap_or(0),
                size: f[6].parse().unwrap_or(0),
            });
        }
        level = next;
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings_read_like_ls() {
        let f = |mode| FileInfo {
            path: String::new(),
            mode,
            uid: 0,
            gid: 0,
            size: 0,
        };
        assert_eq!(f(0o040755).mode_string(), "drwxr-xr-x");
        assert_eq!(f(0o104755).mode_string(), "-rwsr-xr-x");
        assert_eq!(f(0o041777).mode_string(), "drwxrwxrwt");
        assert_eq!(f(0o120777).mode_string(), "lrwxrwxrwx");
        assert_eq!(f(0o100640).mode_string(), "-rw-r-----");
    }
}
