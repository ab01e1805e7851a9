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
    let text = text.as_bytes();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    // A loop into a buffer of the right size: every warm restore decodes
    // its KVM state, 253,000 instructions for a hello guest's with
    // `char::to_digit` collected through `Option`, 142,000 this way
    // (callgrind).
    let mut bytes = Vec::with_capacity(text.len() / 2);
    for pair in text.chunks_exact(2) {
        bytes.push(digit(pair[0])? << 4 | digit(pair[1])?);
    }
    Some(bytes)
}

fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

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
        for bad in ["0", "abc", "zz", "+f", "0x", " 1"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
