//! The one place where diskmount talks to the kernel through `unsafe` code.
//!
//! Following rustix, every ioctl or system call that `nix` does not already
//! wrap safely gets one small safe function here, named after the kernel
//! request (`#[doc(alias)]` carries the C name), with a `// SAFETY:` line on
//! each `unsafe` block and a link to the kernel's documentation. Everything
//! above this module is safe Rust (`#![deny(unsafe_code)]` at the crate root
//! enforces it).
//!
//! The module is private to the crate. The benchmarks write the minimal
//! hand-made syscall sequence (the "floor") with the very same wrappers:
//! they see it through the `bench-sys` feature, which the crate turns on
//! for its own benchmarks through a dev-dependency on itself. Every
//! wrapper takes its descriptors as `BorrowedFd`, so even then no safe
//! caller can hand the kernel a descriptor number that is not open.
#![allow(unsafe_code)]
// Some wrappers serve only the benchmarks' floor.
#![cfg_attr(not(feature = "bench-sys"), allow(dead_code))]

pub mod block;
pub mod btrfs;
pub mod flock;
pub mod loop_dev;
pub mod nbd;
pub mod process;
pub mod statx;

/// The request-number type that `nix`'s ioctl macros expect.
type Request = nix::sys::ioctl::ioctl_num_type;
