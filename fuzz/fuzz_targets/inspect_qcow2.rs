//! The qcow2 header inspection (`format::inspect_from` as `Format::Qcow2`)
//! on untrusted bytes.
//!
//! Invariants: no panic, no read or allocation beyond what the parser's
//! bounds allow (the harness's allocation cap and libFuzzer's RSS limit
//! catch those); an accepted header says qcow2 with a sane virtual size;
//! refusals are at the probe step and name the image.
#![no_main]

diskmount_fuzz::inspect_target!(diskmount::Format::Qcow2);
