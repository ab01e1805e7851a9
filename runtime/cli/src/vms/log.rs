//! The console log of a detached VM: `console.log`, moved to
//! `console.log.1` when it reaches [`MAX_LOG`] (one older file kept, so a
//! chatty appliance holds at most twice that on the host's tmpfs).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bytes in `console.log` before it is rotated.
pub const MAX_LOG: u64 = 1 << 20;

fn older(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Appends to the log, rotating it.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
}

impl LogWriter {
    pub fn create(path: &Path, max: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode_0600()
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.into(),
            file,
            size,
            max,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, older(&self.path))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode_0600()
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.size >= self.max {
            self.rotate()?;
        }
        // Never past the limit in one file: a huge write is split.
        let room = (self.max - self.size).max(1) as usize;
        let n = self.file.write(&buf[..buf.len().min(room)])?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The last `lines` lines of the log (all of it for `None`), older file
/// first.
pub fn tail(path: &Path, lines: Option<usize>) -> io::Result<Vec<u8>> {
    let mut text = Vec::new();
    for p in [older(path), path.to_path_buf()] {
        match File::open(&p) {
            Ok(mut f) => {
                f.read_to_end(&mut text)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let Some(n) = lines else {
        return Ok(text);
    };
    // A final line without its newline counts as a line.
    let body = text.strip_suffix(b"\n").unwrap_or(&text);
    let start = if n == 0 {
        text.len()
    } else {
        body.iter()
            .enumerate()
            .rev()
            .filter(|(_, b)| **b == b'\n')
            .nth(n - 1)
            .map_or(0, |(i, _)| i + 1)
    };
    Ok(text[start..].to_vec())
}

/// Writes what is appended to the log from byte `offset` of the current
/// file on, following rotations, until `done()` says the writer is gone
/// (then what is left is written too).
pub fn follow(
    path: &Path,
    mut offset: u64,
    out: &mut impl Write,
    mut done: impl FnMut() -> bool,
) -> io::Result<()> {
    let mut file = File::open(path)?;
    let mut inode = file.metadata()?.ino();
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let finished = done();
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            offset += n as u64;
            out.write_all(&buf[..n])?;
        }
        out.flush()?;
        // Rotated: the rest of the old file was read above; go on in the new.
        match std::fs::metadata(path) {
            Ok(m) if m.ino() != inode => {
                file = File::open(path)?;
                inode = m.ino();
                offset = 0;
                continue;
            }
            _ => {}
        }
        if finished {
            let _ = offset;
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_limit_and_keeps_one_older_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut w = LogWriter::create(&path, 10).unwrap();
        w.write_all(b"0123456789abcdef").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
        assert_eq!(std::fs::read(older(&path)).unwrap(), b"0123456789");
        w.write_all(b"ghijklmnopq").unwrap();
        assert_eq!(std::fs::read(older(&path)).unwrap(), b"abcdefghij");
        assert_eq!(std::fs::read(&path).unwrap(), b"klmnopq");
        // Reopened, it goes on where it was.
        drop(w);
        let mut w = LogWriter::create(&path, 10).unwrap();
        w.write_all(b"rst").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"klmnopqrst");
        assert_eq!(tail(&path, None).unwrap(), b"abcdefghijklmnopqrst");
    }

    #[test]
    fn tail_counts_lines_across_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(older(&path), b"one\ntwo\nthr").unwrap();
        std::fs::write(&path, b"ee\nfour\nfive").unwrap();
        assert_eq!(tail(&path, Some(0)).unwrap(), b"");
        assert_eq!(tail(&path, Some(1)).unwrap(), b"five");
        assert_eq!(tail(&path, Some(3)).unwrap(), b"three\nfour\nfive");
        assert_eq!(
            tail(&path, Some(99)).unwrap(),
            b"one\ntwo\nthree\nfour\nfive"
        );
        std::fs::write(&path, b"ee\nfour\n").unwrap();
        assert_eq!(tail(&path, Some(2)).unwrap(), b"three\nfour\n");
        let none = dir.path().join("missing.log");
        assert_eq!(tail(&none, None).unwrap(), b"");
    }

    #[test]
    fn follow_reads_on_through_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut w = LogWriter::create(&path, 16).unwrap();
        w.write_all(b"early").unwrap();
        let mut out = Vec::new();
        let mut polls = 0;
        follow(&path, 2, &mut out, || {
            polls += 1;
            match polls {
                1 => {
                    w.write_all(b"-more-and-rotated").unwrap();
                    false
                }
                _ => true,
            }
        })
        .unwrap();
        assert_eq!(out, b"rly-more-and-rotated");
    }
}
