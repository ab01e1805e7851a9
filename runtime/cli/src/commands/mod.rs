//! One file per `husk` command: parse arguments, call the libraries, print.

pub mod kernel;
pub mod validate;
