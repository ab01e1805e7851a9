//! husk-pull REF: pull an image from a registry into husk's cache (an OCI
//! layout under `pulls/`, blobs under `blobs/sha256/`) and print the
//! layout's folder. `husk build docker://...` runs it for images it has
//! not pulled yet; run it yourself to refresh a tag.
//!
//! husk-pull login REGISTRY [FILE]: the user name and password on stdin
//! (a line each), checked with the registry, then saved in the auth file
//! FILE, by default where `podman login` saves them (`husk login` runs
//! it). husk-pull logout REGISTRY [FILE]: removed.

use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, registry, rest @ ..] = args.as_slice() {
        if (cmd == "login" || cmd == "logout") && rest.len() <= 1 {
            let file = match rest.first() {
                Some(f) => std::path::PathBuf::from(f),
                None => match builder::oci::auth::login_file() {
                    Some(f) => f,
                    None => {
                        eprintln!(
                            "husk-pull: neither REGISTRY_AUTH_FILE, XDG_RUNTIME_DIR nor HOME \
                             is set: name the credentials file"
                        );
                        return ExitCode::from(2);
                    }
                },
            };
            return match cmd.as_str() {
                "login" => login(registry, &file),
                _ => logout(registry, &file),
            };
        }
    }
    let [reference] = args.as_slice() else {
        eprintln!("usage: husk-pull docker://HOST[:PORT]/REPO[:TAG|@DIGEST]");
        return ExitCode::from(2);
    };
    let cache = match builder::cache::root() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("husk-pull: cannot find husk's cache folder: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tty = std::io::stderr().is_terminal();
    let mut progress = |step: &str| {
        if tty {
            eprintln!("husk-pull: {step}");
        }
    };
    match builder::oci::registry::pull(reference, &cache, &mut progress) {
        Ok(dir) => {
            println!("{}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Says what went wrong, with its causes; exit status 1.
fn fail(e: &dyn std::error::Error) -> ExitCode {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    eprintln!("husk-pull: {text}");
    ExitCode::FAILURE
}

fn login(registry: &str, file: &std::path::Path) -> ExitCode {
    use builder::oci::auth::{self, Credentials};
    let mut lines = std::io::stdin().lines();
    let mut line = || lines.next().and_then(Result::ok).unwrap_or_default();
    let creds = Credentials {
        user: line(),
        password: line(),
    };
    if creds.user.is_empty() || creds.password.is_empty() {
        eprintln!("husk-pull: login: a user name and a password, a line each, on stdin");
        return ExitCode::from(2);
    }
    if let Err(e) = builder::oci::registry::check_login(registry, &creds) {
        return fail(&e);
    }
    match auth::save(file, registry, &creds) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn logout(registry: &str, file: &std::path::Path) -> ExitCode {
    match builder::oci::auth::forget(file, registry) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            let elsewhere = builder::oci::auth::held_elsewhere(registry, file);
            let more = match elsewhere.first() {
                Some(other) => format!(
                    "; {} holds some (docker logout {registry} removes them)",
                    other.display()
                ),
                None => String::new(),
            };
            eprintln!(
                "husk-pull: not logged in to {registry} in {}{more}",
                file.display()
            );
            ExitCode::FAILURE
        }
        Err(e) => fail(&e),
    }
}
