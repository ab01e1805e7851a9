//! Bytes as lowercase hex, where only text goes: the kernel command
//! line's parameters (`husk.run=` and the others, hex of JSON), a
//! snapshot's KVM structures in its `state.json`.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// The bytes `text` spells, two hex digits each (either case); `None`
/// for an odd length or anything but a digit.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let mut bytes = vec![0; text.len() / 2];
    decode_into(text.as_bytes(), &mut bytes)?;
    Some(bytes)
}

/// Fills `out` with the bytes `text` spells; `None` unless `text` is
/// exactly `out.len()` pairs of hex digits (either case).
pub fn decode_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    // One table lookup a digit and no branch a byte: every warm restore
    // decodes its KVM state this way (a hello guest's, callgrind: 253,000
    // instructions with `char::to_digit` collected through `Option`,
    // 142,000 with a loop of matches into a buffer, 88,000 this way
    // straight into the structures).
    let mut bad = 0;
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (high, low) = (VALUE[usize::from(pair[0])], VALUE[usize::from(pair[1])]);
        bad |= high | low;
        *byte = high << 4 | low;
    }
    (bad & NOT_A_DIGIT == 0).then_some(())
}

const NOT_A_DIGIT: u8 = 0x80;

/// Each character's value as a hex digit, or [`NOT_A_DIGIT`].
const VALUE: [u8; 256] = {
    let mut table = [NOT_A_DIGIT; 256];
    let mut i = 0;
    while i < 16 {
        table[DIGITS[i] as usize] = i as u8;
        table[DIGITS[i].to_ascii_uppercase() as usize] = i as u8;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_back_and_what_is_not_hex_is_refused() {
        let bytes: Vec<u8> = (0..=255).collect();
        let text = encode(&bytes);
        assert_eq!(text.len(), 512);
        assert!(
            text.starts_with("000102") && text.ends_with("fdfeff"),
            "{text}"
        );
        assert_eq!(decode(&text), Some(bytes));
        assert_eq!(decode("0A0b"), Some(vec![10, 11]));
        assert_eq!(decode(""), Some(vec![]));
        for bad in [
            "0", "abc", "zz", "+f", "0x", " 1", "0g", "G0", "\u{80}", "00\u{ff}",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        let mut two = [0u8; 2];
        assert_eq!(decode_into(b"abCD", &mut two), Some(()));
        assert_eq!(two, [0xab, 0xcd]);
        assert_eq!(decode_into(b"abc", &mut two), None, "short");
        assert_eq!(decode_into(b"abcdef", &mut two), None, "long");
    }
}
