//! `/proc/self/mountinfo` lines (`kernel::mountinfo`) on untrusted bytes:
//! a mount point's name is chosen by whoever made the directory.
//!
//! Invariants: no panic; unescaping never grows a field; every parsed
//! line's fields round-trip: escaping a parsed mount point the kernel's way
//! and parsing again gives the same path.
#![no_main]

use std::os::unix::ffi::OsStrExt;

use diskmount::kernel::mountinfo::{Mount, parse, unescape};
use diskmount_fuzz as _; // its allocation cap (`MALLOC_LIMIT`), as in every target
use libfuzzer_sys::fuzz_target;

/// The kernel's escaping of a mountinfo field (`show_mountinfo`:
/// space, tab, newline and backslash as octal).
fn escape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &c in b {
        match c {
            b' ' | b'\t' | b'\n' | b'\\' => out.extend(format!("\\{c:03o}").bytes()),
            c => out.push(c),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    assert!(unescape(data).len() <= data.len());
    for m in parse(data) {
        let line = [
            b"1 0 7:3 / ".as_slice(),
            &escape(m.target.as_os_str().as_bytes()),
            b" rw - ext4 /dev/loop3 rw",
        ]
        .concat();
        let again = Mount::parse(&line).expect("a line made of a parsed path parses");
        assert_eq!(again.target, m.target);
    }
});
