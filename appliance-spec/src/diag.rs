//! Diagnostics that name the file, line, column and field of a problem.
//!
//! Parsing keeps the spanned TOML tree, so an error found anywhere can be
//! placed: serde errors come with a byte span, which is mapped to the dotted
//! field path it falls in; validation errors come with a field path, which is
//! mapped back to the span of that field's value (or of its nearest ancestor
//! when the field is missing).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One problem in an appliance file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted field path, e.g. `rootfs.files[2].dst`; empty for syntax errors
    /// outside any field.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// All the problems found in one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            d.fmt(f)?;
        }
        Ok(())
    }
}

/// A dotted path to a field: keys and array indexes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldPath(Vec<Seg>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

impl FieldPath {
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }

    pub fn key(mut self, k: &str) -> Self {
        self.0.push(Seg::Key(k.to_string()));
        self
    }

    pub fn index(mut self, i: usize) -> Self {
        self.0.push(Seg::Index(i));
        self
    }
}

/// `FieldPath::root().key(a).key(b)...` from a dotted literal without indexes.
pub(crate) fn path(dotted: &str) -> FieldPath {
    dotted.split('.').fold(FieldPath::root(), FieldPath::key)
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Maps between byte offsets, line:column and field paths of one document.
pub(crate) struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
    root: &'a DeTable<'a>,
    /// The document's own span: errors about the root table carry it.
    root_span: Range<usize>,
}

impl<'a> Locator<'a> {
    pub fn new(file: &'a Path, text: &'a str, root: &'a Spanned<DeTable<'a>>) -> Self {
        Locator {
            file,
            text,
            root: root.get_ref(),
            root_span: root.span(),
        }
    }

    /// A diagnostic at a field, placed at the field's value, or at its
    /// nearest ancestor present in the file.
    pub fn at_field(&self, field: &FieldPath, message: String) -> Diagnostic {
        let offset = span_of(self.root, &field.0).map_or(0, |s| s.start);
        self.diagnostic(offset, field.to_string(), message)
    }

    /// A diagnostic for a TOML or serde error at a byte span.
    pub fn at_span(&self, span: Option<Range<usize>>, message: &str) -> Diagnostic {
        let offset = span.as_ref().map_or(0, |s| s.start);
        let mut field = FieldPath::root();
        if span.as_ref() != Some(&self.root_span) {
            let mut best = usize::MAX;
            path_at(
                self.root,
                offset,
                &mut FieldPath::root(),
                &mut field,
                &mut best,
            );
        }
        let (field, message) = translate(field, message);
        self.diagnostic(offset, field.to_string(), message)
    }

    fn diagnostic(&self, offset: usize, field: String, message: String) -> Diagnostic {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..offset].chars().count() + 1;
        Diagnostic {
            file: self.file.to_path_buf(),
            line,
            column,
            field,
            message,
        }
    }
}

/// The span of the value at `path`, or of the deepest ancestor that exists.
fn span_of(table: &DeTable, path: &[Seg]) -> Option<Range<usize>> {
    let (Seg::Key(k), rest) = path.split_first()? else {
        return None;
    };
    let (_, value) = table.iter().find(|(key, _)| key.get_ref() == k)?;
    span_in_value(value, rest).or_else(|| Some(value.span()))
}

fn span_in_value(value: &Spanned<DeValue>, path: &[Seg]) -> Option<Range<usize>> {
    match (value.get_ref(), path.first()?) {
        (DeValue::Table(t), Seg::Key(_)) => span_of(t, path),
        (DeValue::Array(items), Seg::Index(i)) => {
            let item = items.get(*i)?;
            span_in_value(item, &path[1..]).or_else(|| Some(item.span()))
        }
        _ => None,
    }
}

/// Finds the field whose key or value span is the smallest one holding
/// `offset`. Header tables span only their `[header]`, so every child is
/// searched, not only those under a containing span.
fn path_at(
    table: &DeTable,
    offset: usize,
    here: &mut FieldPath,
    found: &mut FieldPath,
    best: &mut usize,
) {
    for (key, value) in table.iter() {
        let mut p = here.clone().key(key.get_ref());
        for span in [key.span(), value.span()] {
            if span.contains(&offset) || span.start == offset {
                let len = span.len();
                if len <= *best {
                    *best = len;
                    *found = p.clone();
                }
            }
        }
        value_path_at(value, offset, &mut p, found, best);
    }
}

fn value_path_at(
    value: &Spanned<DeValue>,
    offset: usize,
    here: &mut FieldPath,
    found: &mut FieldPath,
    best: &mut usize,
) {
    match value.get_ref() {
        DeValue::Table(t) => path_at(t, offset, here, found, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let mut p = here.clone().index(i);
                let span = item.span();
                if (span.contains(&offset) || span.start == offset) && span.len() <= *best {
                    *best = span.len();
                    *found = p.clone();
                }
                value_path_at(item, offset, &mut p, found, best);
            }
        }
        _ => {}
    }
}

/// Rewrites serde's wording into husk's: which key, what is expected.
fn translate(field: FieldPath, message: &str) -> (FieldPath, String) {
    let ticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    if message.starts_with("unknown field") {
        let unknown = ticked.first().copied().unwrap_or_default();
        let known = &ticked[1.min(ticked.len())..];
        let mut text = format!("unknown key {unknown:?}");
        if let Some(close) = closest(unknown, known) {
            text.push_str(&format!("; did you mean {close:?}?"));
        } else if !known.is_empty() {
            text.push_str(&format!("; expected one of: {}", known.join(", ")));
        }
        return (field, text);
    }
    if message.starts_with("missing field") {
        let name = ticked.first().copied().unwrap_or_default();
        let hint = if field.0.is_empty() {
            format!("add a [{name}] table")
        } else {
            format!("add {name} = ...")
        };
        return (field.key(name), format!("required but missing; {hint}"));
    }
    if message.starts_with("unknown variant") {
        let found = ticked.first().copied().unwrap_or_default();
        let known = &ticked[1.min(ticked.len())..];
        return (
            field,
            format!("{found:?} is not one of: {}", known.join(", ")),
        );
    }
    (field, message.to_string())
}

/// The known name closest to `word`, if it is close enough to be a typo.
pub(crate) fn closest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("memroy", "memory"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(closest("memroy", &["cpus", "memory"]), Some("memory"));
        assert_eq!(closest("zzzz", &["cpus", "memory"]), None);
    }

    #[test]
    fn paths_display() {
        let p = FieldPath::root()
            .key("rootfs")
            .key("files")
            .index(2)
            .key("dst");
        assert_eq!(p.to_string(), "rootfs.files[2].dst");
    }
}
