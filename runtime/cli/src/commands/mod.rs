//! One file per `husk` command: parse arguments, call the libraries, print.

pub mod build;
pub mod inspect;
pub mod kernel;
pub mod run;
mod target;
pub mod validate;
