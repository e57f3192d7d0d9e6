//! The one place where diskmount talks to the kernel through `unsafe` code.
//!
//! Following rustix, every ioctl or system call that `nix` does not already
//! wrap safely gets one small safe function here, named after the kernel
//! request (`#[doc(alias)]` carries the C name), with a `// SAFETY:` line on
//! each `unsafe` block and a link to the kernel's documentation. Everything
//! above this module is safe Rust (`#![deny(unsafe_code)]` at the crate root
//! enforces it).
//!
//! The module is public but hidden from the docs so that the benchmark can
//! write the minimal hand-made syscall sequence with the very same wrappers.
#![allow(unsafe_code)]

pub mod block;
pub mod btrfs;
pub mod flock;
pub mod loop_dev;
pub mod process;

/// The request-number type that `nix`'s ioctl macros expect.
type Request = nix::sys::ioctl::ioctl_num_type;
