//! The checksum LVM2 puts on its label, its metadata area header and its
//! metadata text: CRC-32 (the reflected IEEE polynomial) started from
//! `0xf597a6cf` and not inverted at the end.

/// The value every LVM2 checksum starts from.
pub(crate) const INITIAL: u32 = 0xf597_a6cf;

const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// The checksum of `data`, continuing from `crc` ([`INITIAL`] to start).
pub(crate) fn crc(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = (crc >> 8) ^ TABLE[((crc ^ u32::from(b)) & 0xff) as usize];
    }
    crc
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
