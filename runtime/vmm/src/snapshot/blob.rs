//! KVM's structures in `state.json` as one hex string each. Serde writes
//! kvm-bindings' structures as an array of numbers, one per byte: a
//! vCPU's state is some 6,000 of them, and parsing them took 1.4 M
//! instructions (callgrind), more than husk's own from `main` to its image.
//! A string is read back only at the structure's exact size.
//!
//! `#[serde(with = "blob")]` on a field; `blob::option` for an `Option`,
//! `blob::msrs` for a vCPU's MSRs (index and value pairs).

use std::fmt;
use std::marker::PhantomData;

use agent::hex;
use serde::de::{Error, Visitor};
use serde::{Deserializer, Serializer};
use zerocopy::{FromBytes, Immutable, IntoBytes};

pub fn serialize<T: IntoBytes + Immutable, S: Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex::encode(value.as_bytes()))
}

pub fn deserialize<'de, T: FromBytes + IntoBytes, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    // As bytes: a JSON parser then hands over the string as it is in the
    // file, not checked for UTF-8 first (hex is ASCII or refused).
    deserializer.deserialize_bytes(Hex(PhantomData))
}

/// MSRs as one hex string of 12 bytes each, little-endian: the index
/// (u32) and the value (u64). As JSON pairs of numbers they took 98,000
/// of the 343,000 instructions a restore spent parsing a hello guest's
/// state (callgrind); 10,000 this way.
pub mod msrs {
    use super::*;

    const ENTRY: usize = 12;

    pub fn serialize<S: Serializer>(msrs: &[(u32, u64)], serializer: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(msrs.len() * ENTRY);
        for (index, value) in msrs {
            bytes.extend_from_slice(&index.to_le_bytes());
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        serializer.serialize_str(&hex::encode(&bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(u32, u64)>, D::Error> {
        deserializer.deserialize_bytes(Entries)
    }

    struct Entries;

    impl Visitor<'_> for Entries {
        type Value = Vec<(u32, u64)>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a string of hex digits, {} an MSR", 2 * ENTRY)
        }

        fn visit_bytes<E: Error>(self, text: &[u8]) -> Result<Self::Value, E> {
            if !text.len().is_multiple_of(2 * ENTRY) {
                return Err(E::custom(format!(
                    "{} hex digits of MSRs, {} an MSR",
                    text.len(),
                    2 * ENTRY
                )));
            }
            let mut bytes = vec![0; text.len() / 2];
            hex::decode_into(text, &mut bytes)
                .ok_or_else(|| E::custom("a character that is not a hex digit"))?;
            Ok(bytes
                .chunks_exact(ENTRY)
                .map(|e| {
                    let (index, value) = e.split_at(4);
                    (
                        u32::from_le_bytes(index.try_into().expect("4 bytes")),
                        u64::from_le_bytes(value.try_into().expect("8 bytes")),
                    )
                })
                .collect())
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Self::Value, E> {
            self.visit_bytes(text.as_bytes())
        }
    }
}

pub mod option {
    use super::*;

    pub fn serialize<T: IntoBytes + Immutable, S: Serializer>(
        value: &Option<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => serializer.serialize_some(&hex::encode(v.as_bytes())),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: FromBytes + IntoBytes, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<T>, D::Error> {
        deserializer.deserialize_option(MaybeHex(PhantomData))
    }

    struct MaybeHex<T>(PhantomData<T>);

    impl<'de, T: FromBytes + IntoBytes> Visitor<'de> for MaybeHex<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("null or ")?;
            Hex::<T>(PhantomData).expecting(f)
        }

        fn visit_none<E: Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

/// Decodes the string where the parser has it (in the file's text, or
/// its scratch buffer), straight into the structure: no copy of the
/// text, no buffer of bytes.
struct Hex<T>(PhantomData<T>);

impl<T: FromBytes + IntoBytes> Visitor<'_> for Hex<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a string of {} hex digits", 2 * std::mem::size_of::<T>())
    }

    fn visit_bytes<E: Error>(self, text: &[u8]) -> Result<T, E> {
        from_hex(text).map_err(E::custom)
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<T, E> {
        self.visit_bytes(text.as_bytes())
    }
}

fn from_hex<T: FromBytes + IntoBytes>(text: &[u8]) -> Result<T, String> {
    let want = std::mem::size_of::<T>();
    if text.len() != want * 2 {
        return Err(format!(
            "{} hex digits where a {} of {want} bytes takes {}",
            text.len(),
            std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("structure"),
            want * 2
        ));
    }
    let mut value = T::new_zeroed();
    hex::decode_into(text, value.as_mut_bytes()).ok_or("a character that is not a hex digit")?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use kvm_bindings::{kvm_pit_state2, kvm_regs, kvm_xsave};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    struct State {
        #[serde(with = "super")]
        regs: kvm_regs,
        #[serde(with = "super")]
        xsave: kvm_xsave,
        #[serde(with = "super::option")]
        pit: Option<kvm_pit_state2>,
    }

    fn state() -> State {
        let mut xsave = kvm_xsave::default();
        for (i, w) in xsave.region.iter_mut().enumerate() {
            *w = (i as u32).wrapping_mul(0x9e37_79b9);
        }
        State {
            regs: kvm_regs {
                rip: 0xffff_ffff_8100_0000,
                rax: 42,
                rflags: 2,
                ..Default::default()
            },
            xsave,
            pit: None,
        }
    }

    #[test]
    fn structures_come_back_as_they_were_saved() {
        let saved = state();
        let text = serde_json::to_string(&saved).unwrap();
        // One string per structure, two digits per byte.
        assert!(text.len() < 2 * (144 + 4096) + 200, "{} bytes", text.len());
        let back: State = serde_json::from_str(&text).unwrap();
        assert_eq!(back.regs, saved.regs);
        assert_eq!(back.xsave.region, saved.xsave.region);
        assert!(back.pit.is_none());
        let with_pit = State {
            pit: Some(kvm_pit_state2 {
                flags: 7,
                ..Default::default()
            }),
            ..state()
        };
        let back: State = serde_json::from_str(&serde_json::to_string(&with_pit).unwrap()).unwrap();
        assert_eq!(back.pit.unwrap().flags, 7);
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msrs {
        #[serde(with = "super::msrs")]
        msrs: Vec<(u32, u64)>,
    }

    #[test]
    fn msrs_come_back_and_a_broken_list_is_refused() {
        let saved = Msrs {
            msrs: vec![(0x10, u64::MAX), (0xc000_0080, 0xd01), (0x174, 0)],
        };
        let text = serde_json::to_string(&saved).unwrap();
        assert_eq!(text.len(), r#"{"msrs":""}"#.len() + 3 * 24, "{text}");
        assert!(text.contains(r#""10000000ffffffffffffffff"#), "{text}");
        assert_eq!(serde_json::from_str::<Msrs>(&text).unwrap(), saved);
        let none = serde_json::from_str::<Msrs>(r#"{"msrs":""}"#).unwrap();
        assert!(none.msrs.is_empty());
        for (bad, why) in [
            (r#"{"msrs":"1000000000"}"#, "10 hex digits of MSRs"),
            (r#"{"msrs":"10000000ffffffffffffffzz"}"#, "not a hex digit"),
            (r#"{"msrs":[[16,1]]}"#, "a string of hex digits"),
        ] {
            let err = serde_json::from_str::<Msrs>(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_string_of_another_length_or_not_hex_is_refused_never_padded() {
        let text = serde_json::to_string(&state()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let regs = v["regs"].as_str().unwrap().to_string();
        let with_regs = |r: &str| {
            let mut v = v.clone();
            v["regs"] = serde_json::Value::String(r.to_string());
            serde_json::from_value::<State>(v).unwrap_err().to_string()
        };
        let short = with_regs(&regs[..regs.len() - 2]);
        assert!(
            short.contains("286 hex digits") && short.contains("288"),
            "{short}"
        );
        let longer = with_regs(&format!("{regs}00"));
        assert!(longer.contains("290 hex digits"), "{longer}");
        let bad = with_regs(&format!("zz{}", &regs[2..]));
        assert!(bad.contains("not a hex digit"), "{bad}");
        // The old form, an array of numbers, is not taken either.
        let mut old = v.clone();
        old["regs"] = serde_json::json!([0, 1, 2]);
        assert!(serde_json::from_value::<State>(old).is_err());
    }
}
