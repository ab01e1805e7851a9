//! husk's builder: turns appliance descriptions into bootable images, and
//! builds husk's own guest kernel from source.

#![forbid(unsafe_code)]

pub mod cache;
pub mod kernel;
