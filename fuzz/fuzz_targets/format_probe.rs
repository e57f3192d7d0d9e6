//! The image format from its magic bytes (`probe_from`, `detect`), then
//! the header inspection of whatever format it says.
//!
//! Invariants: no panic; `probe_from` agrees with `detect` on the same
//! head and tail; refusals are at the probe step and name the image.
#![no_main]

use diskmount::Step;
use diskmount::format::{self, Detected, PROBE_HEAD, PROBE_TAIL, ReadAt};
use diskmount_fuzz::{Image, check_error, path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let img = Image::new(data);
    let size = img.len();
    let mut head = vec![0u8; PROBE_HEAD.min(size as usize)];
    let n = img.read_at_most(&mut head, 0).unwrap();
    head.truncate(n);
    let mut tail = vec![0u8; PROBE_TAIL.min(size as usize)];
    let n = img
        .read_at_most(&mut tail, size.saturating_sub(PROBE_TAIL as u64))
        .unwrap();
    tail.truncate(n);
    let detected = format::detect(&head, &tail);
    match format::probe_from(&img, path()) {
        Ok(f) => {
            assert_eq!(detected, Detected::Format(f));
            match format::inspect_from(&img, path(), f) {
                Ok(info) => assert_eq!(info.format, f),
                Err(e) => check_error(&e, Step::Probe),
            }
        }
        Err(e) => {
            assert_eq!(detected, Detected::Qed);
            check_error(&e, Step::Probe);
        }
    }
});
