//! One file per `husk` command: parse arguments, call the libraries, print.

pub mod build;
mod env;
pub mod exec;
pub mod export;
pub mod inspect;
pub mod kernel;
pub mod logs;
pub mod ps;
pub mod rm;
pub mod run;
pub mod snapshot;
pub mod start;
pub mod stop;
mod target;
pub mod validate;
pub mod wait;

/// Runs `f` for each name, as docker's commands over several containers
/// do: a failure is reported on stderr and the others still run; the
/// status says whether any failed.
pub(crate) fn each_name(
    names: &[String],
    mut f: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<std::process::ExitCode> {
    let mut failed = false;
    for name in names {
        if let Err(e) = f(name) {
            eprintln!("husk: {e:#}");
            failed = true;
        }
    }
    Ok(if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}
