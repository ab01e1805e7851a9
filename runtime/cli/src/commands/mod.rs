//! One file per `husk` command: parse arguments, call the libraries, print.

pub mod kernel;
pub mod run;
pub mod validate;
