//! One file per `husk` command: parse arguments, call the libraries, print.

pub mod build;
pub mod exec;
pub mod inspect;
pub mod kernel;
pub mod logs;
pub mod ps;
pub mod rm;
pub mod run;
pub mod start;
pub mod stop;
mod target;
pub mod validate;
pub mod wait;
