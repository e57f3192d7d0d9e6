//! The checksum LVM2 puts on its label, its metadata area header and its
//! metadata text: CRC-32 (the reflected IEEE polynomial) started from
//! `0xf597a6cf` and not inverted at the end.

/// The value every LVM2 checksum starts from.
pub(crate) const INITIAL: u32 = 0xf597_a6cf;

/// The checksum of `data`, continuing from `crc` ([`INITIAL`] to start).
///
/// crc32fast computes the same CRC with the register inverted before and
/// after (its `initial` is the previous result), so the register is
/// inverted on the way in and out.
pub(crate) fn crc(crc: u32, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(!crc);
    h.update(data);
    !h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_bitwise_definition_and_continues() {
        let data = b"testvg {\nid = \"x\"\n}\n";
        let mut slow = INITIAL;
        for &b in data {
            slow ^= u32::from(b);
            for _ in 0..8 {
                slow = if slow & 1 != 0 {
                    (slow >> 1) ^ 0xEDB8_8320
                } else {
                    slow >> 1
                };
            }
        }
        assert_eq!(crc(INITIAL, data), slow);
        assert_eq!(crc(crc(INITIAL, &data[..5]), &data[5..]), slow);
        assert_eq!(crc(INITIAL, b""), INITIAL);
    }
}
