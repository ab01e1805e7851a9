//! `husk login` and `husk logout`: a registry's credentials, saved where
//! `podman login` saves them (and read by every pull, as are docker's and
//! podman's own; see `builder::oci::auth`). husk-pull, the program that
//! speaks to registries, checks them with the registry before they are
//! saved, as `docker login` does.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use anyhow::Context;

#[derive(clap::Args)]
pub struct LoginArgs {
    /// The user name (asked for on a terminal when not given)
    #[arg(short, long, value_name = "USER")]
    username: Option<String>,
    /// The password (other users see it in the process list: prefer
    /// --password-stdin)
    #[arg(short, long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from stdin
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    file: AuthFile,
    /// The registry (default: docker.io)
    #[arg(default_value = "docker.io")]
    registry: String,
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    #[command(flatten)]
    file: AuthFile,
    /// The registry (default: docker.io)
    #[arg(default_value = "docker.io")]
    registry: String,
}

#[derive(clap::Args)]
struct AuthFile {
    /// The credentials file (default: $REGISTRY_AUTH_FILE, else
    /// $XDG_RUNTIME_DIR/containers/auth.json, else
    /// ~/.config/containers/auth.json, as podman)
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
}

impl AuthFile {
    /// husk-pull's arguments for it: the file, when one is named.
    fn args(&self) -> Vec<std::ffi::OsString> {
        self.authfile.iter().map(|f| f.into()).collect()
    }
}

/// A registry as docker takes it: `https://HOST/v1/` is HOST.
fn registry_name(given: &str) -> anyhow::Result<String> {
    let bare = given
        .strip_prefix("https://")
        .or_else(|| given.strip_prefix("http://"))
        .unwrap_or(given);
    let host = bare.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@') {
        anyhow::bail!("{given:?} is not a registry (HOST[:PORT], as quay.io or 127.0.0.1:5000)");
    }
    Ok(host.to_string())
}

pub fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let registry = registry_name(&args.registry)?;
    let terminal = std::io::stdin().is_terminal();
    let user = match args.username {
        Some(u) => u,
        None if terminal && !args.password_stdin => prompt("Username: ", true)?,
        None => anyhow::bail!("give the user name with -u USER"),
    };
    let password = match (args.password, args.password_stdin) {
        (Some(p), _) => {
            eprintln!(
                "husk: a password on the command line is seen by other users: use --password-stdin"
            );
            p
        }
        (None, true) => {
            let mut p = String::new();
            std::io::stdin()
                .read_to_string(&mut p)
                .context("cannot read the password from stdin")?;
            p.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) if terminal => prompt("Password: ", false)?,
        (None, false) => anyhow::bail!("give the password with --password-stdin"),
    };
    if user.is_empty() || password.is_empty() {
        anyhow::bail!("the user name and the password must not be empty");
    }
    if user.contains(['\n', ':']) || password.contains('\n') {
        anyhow::bail!("a user name holds no ':' or line break, a password no line break");
    }
    let mut child = husk_pull(&["login", &registry])?
        .args(args.file.args())
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot run husk-pull")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("{user}\n{password}\n").as_bytes())
            .context("cannot hand the credentials to husk-pull")?;
    }
    if !child.wait().context("husk-pull")?.success() {
        return Ok(ExitCode::FAILURE);
    }
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

pub fn logout(args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let registry = registry_name(&args.registry)?;
    let status = husk_pull(&["logout", &registry])?
        .args(args.file.args())
        .status()
        .context("cannot run husk-pull")?;
    if !status.success() {
        return Ok(ExitCode::FAILURE);
    }
    println!("Removed login credentials for {registry}");
    Ok(ExitCode::SUCCESS)
}

fn husk_pull(args: &[&str]) -> anyhow::Result<std::process::Command> {
    let program = builder::oci::puller().context(
        "husk-pull, which speaks to registries, is not installed next to husk (ci/setup builds both; beside a husk \
         of cargo build --release: cargo build --release -p builder --features registry --bin husk-pull)",
    )?;
    let mut c = std::process::Command::new(program);
    c.args(args);
    Ok(c)
}

/// One line from the terminal on stdin, after `text` on stderr; typed
/// without echo unless `echo`.
fn prompt(text: &str, echo: bool) -> anyhow::Result<String> {
    eprint!("{text}");
    // SAFETY: an all-zero termios is a valid value of the plain C struct,
    // filled by tcgetattr before it is used.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes the termios we own; fd 0 is stdin.
    let quiet = !echo && unsafe { libc::tcgetattr(0, &mut saved) } == 0;
    if quiet {
        let mut silent = saved;
        silent.c_lflag &= !libc::ECHO;
        // SAFETY: sets stdin's terminal from a termios we own.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &silent) };
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if quiet {
        // SAFETY: puts back the settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
        eprintln!();
    }
    read.context("cannot read from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_named_as_docker_takes_them() {
        assert_eq!(registry_name("quay.io").unwrap(), "quay.io");
        assert_eq!(registry_name("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(
            registry_name("https://index.docker.io/v1/").unwrap(),
            "index.docker.io"
        );
        for bad in ["", "https://", "a b", "user@host"] {
            assert!(registry_name(bad).is_err(), "{bad:?}");
        }
    }
}
