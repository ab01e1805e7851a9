//! husk's guest init: the run configuration the builder and init share,
//! and user resolution. The binary (`src/main.rs`) is PID 1 in every image.

#![forbid(unsafe_code)]

pub mod config;
pub mod dhcp;
pub mod populate;
pub mod user;
