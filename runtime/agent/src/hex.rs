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
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
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
