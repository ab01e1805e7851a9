//! KVM's structures in `state.json` as one hex string each. Serde writes
//! kvm-bindings' structures as an array of numbers, one per byte: a
//! vCPU's state is some 6,000 of them, and parsing them took 1.4 M
//! instructions (callgrind), more than husk's own from `main` to its image.
//! A string is read back only at the structure's exact size.
//!
//! `#[serde(with = "blob")]` on a field; `blob::option` for an `Option`.

use agent::hex;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};
use zerocopy::{FromBytes, Immutable, IntoBytes};

pub fn serialize<T: IntoBytes + Immutable, S: Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex::encode(value.as_bytes()))
}

pub fn deserialize<'de, T: FromBytes, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
    from_hex(&text).map_err(D::Error::custom)
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

    pub fn deserialize<'de, T: FromBytes, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<T>, D::Error> {
        Option::<std::borrow::Cow<str>>::deserialize(deserializer)?
            .map(|text| from_hex(&text).map_err(D::Error::custom))
            .transpose()
    }
}

fn from_hex<T: FromBytes>(text: &str) -> Result<T, String> {
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
    let bytes = hex::decode(text).ok_or("a character that is not a hex digit")?;
    T::read_from_bytes(&bytes).map_err(|_| "cannot be read as the structure".to_string())
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
