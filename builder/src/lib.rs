//! husk's builder: turns appliance descriptions and OCI images into
//! bootable root filesystem images with husk's init inside, and builds
//! husk's own guest kernel from source; exports images as disks other
//! hypervisors boot.

#![forbid(unsafe_code)]

pub mod build;
pub mod cache;
pub mod export;
pub mod image;
pub mod images;
pub mod inspect;
pub mod kernel;
pub mod oci;
pub mod rootfs;

pub use build::{build, find_init, BuildError, Built, Input};
