//! `-e` and `--env-file`, as docker and podman take them (and `--entrypoint`'s words).
//!
//! `KEY=VALUE` is set as written. `KEY` alone takes husk's own value of
//! `KEY` (a secret need not be written on the command line), and is left out
//! when husk has none. An env file holds one such entry per line; blank lines
//! and lines starting with `#` are skipped, and nothing is unquoted: a value
//! is the rest of its line. Files come first, in order, then `-e`: a later
//! entry for a key replaces an earlier one (the guest's init sets them in
//! order).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The environment entries of `-e` (`entries`) and `--env-file` (`files`),
/// every one `KEY=VALUE`, `KEY` alone resolved in husk's environment.
pub fn gather(entries: &[String], files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let host = |key: &str| std::env::var_os(key).and_then(|v| v.into_string().ok());
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("--env-file {}", file.display()))?;
        out.extend(parse_file(file, &text, host)?);
    }
    for entry in entries {
        if let Some(e) =
            resolve(entry, host).map_err(|why| anyhow::anyhow!("-e {entry:?}: {why}"))?
        {
            out.push(e);
        }
    }
    Ok(out)
}

/// An env file's entries; an error names the file and line.
fn parse_file(
    file: &Path,
    text: &str,
    host: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = resolve(line, &host)
            .map_err(|why| anyhow::anyhow!("{}:{}: {why}", file.display(), n + 1))?;
        out.extend(entry);
    }
    Ok(out)
}

/// One entry as `KEY=VALUE`, or `None` for a `KEY` husk has no value of.
fn resolve(entry: &str, host: impl Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    let key = entry.split_once('=').map_or(entry, |(key, _)| key);
    if key.is_empty() {
        return Err("no variable name before '='".into());
    }
    if key.chars().any(|c| c.is_whitespace() || c == '\0') {
        return Err(format!("variable name {key:?} holds white space"));
    }
    if entry.contains('\0') {
        return Err("a NUL byte cannot be in the environment".into());
    }
    if entry.contains('=') {
        return Ok(Some(entry.to_string()));
    }
    Ok(host(key).map(|value| format!("{key}={value}")))
}

/// `--entrypoint`'s words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint(pub Vec<String>);

/// `--entrypoint`, as docker and podman take it: a JSON array of words
/// (podman's), else one program; `""` for none.
pub fn parse_entrypoint(text: &str) -> Result<Entrypoint, String> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text)
            .map(Entrypoint)
            .map_err(|e| format!("{text:?}: not a JSON array of strings: {e}"));
    }
    Ok(Entrypoint(if text.is_empty() {
        Vec::new()
    } else {
        vec![text.to_string()]
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(key: &str) -> Option<String> {
        (key == "TOKEN").then(|| "s3cret".to_string())
    }

    #[test]
    fn a_key_alone_takes_the_host_value_or_is_left_out() {
        assert_eq!(resolve("A=1", host).unwrap(), Some("A=1".into()));
        assert_eq!(resolve("A=", host).unwrap(), Some("A=".into()));
        assert_eq!(resolve("A=b=c", host).unwrap(), Some("A=b=c".into()));
        assert_eq!(resolve("TOKEN", host).unwrap(), Some("TOKEN=s3cret".into()));
        assert_eq!(resolve("UNSET", host).unwrap(), None);
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(resolve("=1", host)
            .unwrap_err()
            .contains("no variable name"));
        assert!(resolve("", host).unwrap_err().contains("no variable name"));
        assert!(resolve("A B=1", host).unwrap_err().contains("white space"));
        assert!(resolve("A=1\0", host).unwrap_err().contains("NUL"));
    }

    #[test]
    fn an_env_file_skips_comments_and_blank_lines_and_keeps_values_whole() {
        let text = "# settings\n\nA=1\n  B=spaced value \nTOKEN\nUNSET\nQ=\"quoted\"\n";
        let got = parse_file(Path::new("app.env"), text, host).unwrap();
        assert_eq!(
            got,
            ["A=1", "B=spaced value ", "TOKEN=s3cret", "Q=\"quoted\""].map(String::from)
        );
        // A name with a space: the line is refused, its place named.
        let err = parse_file(Path::new("app.env"), "A=1\nB C=2\n", host).unwrap_err();
        assert_eq!(
            format!("{err}"),
            "app.env:2: variable name \"B C\" holds white space"
        );
    }

    #[test]
    fn files_come_first_and_a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.env");
        std::fs::write(&file, "A=from-file\nB=2\n").unwrap();
        let got = gather(&["A=from-flag".into()], std::slice::from_ref(&file)).unwrap();
        assert_eq!(got, ["A=from-file", "B=2", "A=from-flag"].map(String::from));
        let missing = dir.path().join("nope.env");
        let err = gather(&[], std::slice::from_ref(&missing)).unwrap_err();
        assert!(format!("{err:#}").contains(&format!("--env-file {}", missing.display())));
    }

    #[test]
    fn an_entrypoint_is_a_program_or_a_json_array() {
        let words = |text| parse_entrypoint(text).unwrap().0;
        assert_eq!(words("/bin/sh -c"), ["/bin/sh -c"]);
        assert_eq!(words(r#"["sh", "-c"]"#), ["sh", "-c"]);
        assert!(words("").is_empty());
        assert!(parse_entrypoint("[1]").is_err());
        // As husk run's command line takes it, with the other newer
        // flags (clap checks each field's type only when it is given).
        let args: Vec<String> = [
            "run",
            "--entrypoint",
            r#"["sh","-c"]"#,
            "--tmpfs",
            "/x:size=1m",
            "--add-host",
            "a:10.0.0.1",
            "--dns",
            "10.0.0.53",
            "--dns-search",
            "test",
            "--dns-option",
            "ndots:2",
            "-P",
            "-v",
            "vol:/data",
            "--net",
            "user",
            "--network",
            "backend",
            "--network-alias",
            "db",
            "img",
            "--",
            "x",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        crate::parse_run_args(&args).unwrap();
    }
}
