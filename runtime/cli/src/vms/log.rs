//! The console log of a detached VM: `console.log`, moved to
//! `console.log.1` (and an older `.1` to `.2`, and so on) when it reaches
//! its limit (a whole line that does not fit starts the next file);
//! [`Limits`] says how large a file grows (its lines' times counted) and how many are
//! kept (docker's `--log-opt max-size` and `max-file`; by default 1 MiB
//! and two files, so a chatty appliance holds at most 2 MiB).
//!
//! Each line is stored after the time its first bytes arrived, as
//! `docker logs -t` shows it (`2026-12-02T04:20:00.123456789Z line`), so
//! `husk logs` can show the times and select lines by them. A file that
//! begins in the middle of a line (rotated there) begins with a time too,
//! which a reader drops. A log written without times (by an older husk)
//! reads as it is.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Bytes in `console.log` before it is rotated, by default.
pub const MAX_LOG: u64 = 1 << 20;

/// How much of the log is kept: files of `max_size` bytes at most,
/// `max_files` of them (the current one among them; with one, it starts
/// again empty when full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_size: u64,
    pub max_files: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_size: MAX_LOG,
            max_files: 2,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, then a space.
const STAMP: usize = 30;

/// The `n`th older file of the log at `path` (`console.log.N`).
fn older_n(path: &Path, n: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

#[cfg(test)]
fn older(path: &Path) -> PathBuf {
    older_n(path, 1)
}

/// A time as a line's stamp: UTC, to the nanosecond, always as wide.
pub fn stamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

/// The stamp `line` starts with, as nanoseconds since the epoch, and the
/// rest of the line; `None` and the line whole when it has none.
fn split_stamp(line: &[u8]) -> (Option<(i128, &[u8])>, &[u8]) {
    let looks_like = line.len() > STAMP
        && line[STAMP] == b' '
        && line[4] == b'-'
        && line[10] == b'T'
        && line[STAMP - 1] == b'Z';
    let parsed = looks_like
        .then(|| std::str::from_utf8(&line[..STAMP]).ok())
        .flatten()
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok());
    match parsed {
        Some(t) => (
            Some((t.unix_timestamp_nanos(), &line[..STAMP])),
            &line[STAMP + 1..],
        ),
        None => (None, line),
    }
}

/// Appends to the log, rotating it, each line after its time.
pub struct LogWriter {
    path: PathBuf,
    /// `None`: no log is kept (`--log-driver none`).
    file: Option<File>,
    size: u64,
    max: u64,
    /// Files kept, the current one among them.
    files: u32,
    /// The next byte starts a line, or the file.
    line_start: bool,
}

impl LogWriter {
    pub fn create(path: &Path, limits: Limits) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode_0600()
            .open(path)?;
        let mut size = file.metadata()?.len();
        // Run again (a restart), it goes on after the last run's output,
        // on a line of its own (with its own time: `husk start -a` shows
        // a run's lines by their times).
        let mut last = [b'\n'];
        if size > 0 {
            file.read_exact_at(&mut last, size - 1)?;
        }
        if last[0] != b'\n' {
            (&file).write_all(b"\n")?;
            size += 1;
        }
        Ok(LogWriter {
            path: path.into(),
            file: Some(file),
            size,
            max: limits.max_size.max(1),
            files: limits.max_files.max(1),
            line_start: true,
        })
    }

    /// A writer that keeps nothing: the log of `--log-driver none`, whose
    /// files (from before) are removed.
    pub fn none(path: &Path) -> Self {
        let _ = std::fs::remove_file(path);
        for n in 1.. {
            if std::fs::remove_file(older_n(path, n)).is_err() {
                break;
            }
        }
        LogWriter {
            path: path.into(),
            file: None,
            size: 0,
            max: u64::MAX,
            files: 1,
            line_start: true,
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        // The oldest kept goes, each other moves one older, and the
        // current one becomes `.1`; with no older file kept, it is
        // emptied.
        let _ = std::fs::remove_file(older_n(&self.path, self.files));
        for n in (1..self.files).rev() {
            let to = older_n(&self.path, n);
            let from = if n == 1 {
                self.path.clone()
            } else {
                older_n(&self.path, n - 1)
            };
            match std::fs::rename(&from, &to) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        if self.files == 1 {
            let _ = std::fs::remove_file(&self.path);
        }
        self.file = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode_0600()
                .open(&self.path)?,
        );
        self.size = 0;
        // The new file begins with a time, also in the middle of a line.
        self.line_start = true;
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
    /// Writes one line at most (to its newline), after its time when it
    /// starts here; never past the limit in one file, the time counted.
    /// A whole line that does not fit where the file is goes to the next
    /// file whole; only a line longer than a file is cut (or one that
    /// arrives in pieces).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() || buf.is_empty() {
            return Ok(buf.len());
        }
        let end = buf
            .iter()
            .position(|&b| b == b'\n')
            .map_or(buf.len(), |i| i + 1);
        let time = if self.line_start { STAMP as u64 + 1 } else { 0 };
        let whole = buf[end - 1] == b'\n' && time + end as u64 <= self.max;
        let fits = self.size + time + if whole { end as u64 } else { 1 } <= self.max;
        if self.size > 0 && !fits {
            self.rotate()?;
        }
        // Rotated, the line goes on after a time of its own.
        let time = if self.line_start { STAMP as u64 + 1 } else { 0 };
        let room = self.max.saturating_sub(self.size + time).max(1) as usize;
        let n = end.min(room);
        let mut record = Vec::with_capacity(STAMP + 1 + n);
        if self.line_start {
            record.extend_from_slice(stamp(OffsetDateTime::now_utc()).as_bytes());
            record.push(b' ');
        }
        record.extend_from_slice(&buf[..n]);
        if let Some(file) = &mut self.file {
            file.write_all(&record)?;
        }
        self.size += record.len() as u64;
        self.line_start = buf[n - 1] == b'\n';
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// Which lines `husk logs` shows, and how.
#[derive(Debug, Clone, Copy, Default)]
pub struct Select {
    /// The last N lines only.
    pub lines: Option<usize>,
    /// Lines that arrived at or after, before or at, these times
    /// (nanoseconds since the epoch). A line without a time is shown.
    pub since: Option<i128>,
    pub until: Option<i128>,
    /// Each line after its time.
    pub timestamps: bool,
}

impl Select {
    fn keeps(&self, at: Option<i128>) -> bool {
        at.is_none_or(|t| self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u))
    }
}

/// One line: its time and stamp, and its bytes with the newline (none on
/// a last, unfinished line).
struct Line<'a> {
    stamp: Option<(i128, &'a [u8])>,
    text: Vec<u8>,
}

/// The lines of the log's files (older first); a line a rotation cut in
/// two is one again.
fn lines_of(files: &[Vec<u8>]) -> Vec<Line<'_>> {
    let mut lines: Vec<Line> = Vec::new();
    for data in files {
        let mut rest = &data[..];
        let mut first = true;
        while !rest.is_empty() {
            let (stamp, body) = split_stamp(rest);
            let end = body
                .iter()
                .position(|&b| b == b'\n')
                .map_or(body.len(), |i| i + 1);
            match lines.last_mut() {
                Some(prev) if first && !prev.text.ends_with(b"\n") => {
                    prev.text.extend_from_slice(&body[..end]);
                }
                _ => lines.push(Line {
                    stamp,
                    text: body[..end].to_vec(),
                }),
            }
            rest = &body[end..];
            first = false;
        }
    }
    lines
}

/// The log's files as they are now (older first), and the length of the
/// current one (where [`follow`] goes on).
fn load(path: &Path) -> io::Result<(Vec<Vec<u8>>, u64)> {
    let mut files = Vec::new();
    let mut paths = vec![path.to_path_buf()];
    paths.extend((1..).map(|n| older_n(path, n)).take_while(|p| p.exists()));
    for p in paths.into_iter().rev() {
        let mut text = Vec::new();
        match File::open(&p) {
            Ok(mut f) => {
                f.read_to_end(&mut text)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        files.push(text);
    }
    let current = files.last().map_or(0, |f| f.len() as u64);
    Ok((files, current))
}

/// The log as `select` shows it, and the length of the current file it
/// read (for [`follow`]).
pub fn read(path: &Path, select: &Select) -> io::Result<(Vec<u8>, u64)> {
    let (files, current) = load(path)?;
    let lines: Vec<Line> = lines_of(&files)
        .into_iter()
        .filter(|l| select.keeps(l.stamp.map(|(t, _)| t)))
        .collect();
    let skip = select.lines.map_or(0, |n| lines.len().saturating_sub(n));
    let mut out = Vec::new();
    for line in &lines[skip..] {
        if let (true, Some((_, s))) = (select.timestamps, line.stamp) {
            out.extend_from_slice(s);
            out.push(b' ');
        }
        out.extend_from_slice(&line.text);
    }
    Ok((out, current))
}

/// The last `lines` lines of the log (all of it for `None`), without
/// their times: what an error shows of a console.
pub fn tail(path: &Path, lines: Option<usize>) -> io::Result<Vec<u8>> {
    let select = Select {
        lines,
        ..Select::default()
    };
    read(path, &select).map(|(text, _)| text)
}

/// The log as it arrives (in pieces that may end anywhere), shown as
/// `select` says.
struct Shown<'a> {
    select: &'a Select,
    /// The next byte starts a line (or a file): a stamp may come.
    line_start: bool,
    /// A line's first bytes, until it is known whether they are a stamp.
    head: Vec<u8>,
    /// The current line is shown.
    keep: bool,
    /// The next file goes on with the current line: its stamp is dropped.
    continuing: bool,
}

impl Shown<'_> {
    fn feed(&mut self, data: &[u8], out: &mut impl Write) -> io::Result<()> {
        let mut i = 0;
        while i < data.len() {
            if self.line_start {
                while self.head.len() <= STAMP && i < data.len() {
                    self.head.push(data[i]);
                    i += 1;
                    if self.head.ends_with(b"\n") {
                        break;
                    }
                }
                if self.head.len() <= STAMP && !self.head.ends_with(b"\n") {
                    return Ok(());
                }
                self.start_line(out)?;
                continue;
            }
            let end = data[i..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(data.len(), |j| i + j + 1);
            if self.keep {
                out.write_all(&data[i..end])?;
            }
            self.line_start = data[end - 1] == b'\n';
            i = end;
        }
        Ok(())
    }

    /// The head gathered: its stamp decides whether the line is shown.
    fn start_line(&mut self, out: &mut impl Write) -> io::Result<()> {
        let head = std::mem::take(&mut self.head);
        let (stamp, body) = split_stamp(&head);
        if !std::mem::take(&mut self.continuing) {
            self.keep = self.select.keeps(stamp.map(|(t, _)| t));
            if let (true, true, Some((_, s))) = (self.keep, self.select.timestamps, stamp) {
                out.write_all(s)?;
                out.write_all(b" ")?;
            }
        }
        if self.keep {
            out.write_all(body)?;
        }
        self.line_start = body.ends_with(b"\n");
        Ok(())
    }

    /// A new file: it starts with a stamp, in a line or not.
    fn next_file(&mut self) {
        self.continuing = !self.line_start;
        self.line_start = true;
    }

    /// The writer is gone: a head that never grew to a stamp's length is
    /// a line of its own.
    fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        if !self.head.is_empty() {
            self.start_line(out)?;
        }
        Ok(())
    }
}

/// Writes what is appended to the log from byte `offset` of the current
/// file on (as `select` shows it), following rotations, until `done()`
/// says the writer is gone (then what is left is written too).
pub fn follow(
    path: &Path,
    offset: u64,
    select: &Select,
    out: &mut impl Write,
    mut done: impl FnMut() -> bool,
) -> io::Result<()> {
    let mut file = File::open(path)?;
    let mut inode = file.metadata()?.ino();
    let mut last = [b'\n'];
    if offset > 0 {
        file.read_exact_at(&mut last, offset - 1)?;
    }
    let mut shown = Shown {
        select,
        line_start: last[0] == b'\n',
        head: Vec::new(),
        keep: true,
        continuing: false,
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let finished = done();
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            shown.feed(&buf[..n], out)?;
        }
        out.flush()?;
        // Rotated: the rest of the old file was read above; go on in the new.
        match std::fs::metadata(path) {
            Ok(m) if m.ino() != inode => {
                file = File::open(path)?;
                inode = m.ino();
                shown.next_file();
                continue;
            }
            _ => {}
        }
        if finished {
            shown.finish(out)?;
            return out.flush();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests;
