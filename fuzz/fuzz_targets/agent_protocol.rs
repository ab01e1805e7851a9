//! Any bytes as a connection to the guest agent (requests, as init reads
//! them) or from it (responses, as the host reads them): frames decode
//! or fail with an error, never a panic, and never read past a frame's
//! length; whatever decodes encodes back to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn check<T>(data: &[u8])
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    let mut r = data;
    // At most as many frames as there are 4-byte lengths in the input.
    for _ in 0..=data.len() / 4 {
        match agent::read::<T>(&mut r) {
            Ok(Some(message)) => {
                let frame = agent::encode(&message);
                let back: T = agent::read(&mut &frame[..])
                    .expect("an encoded frame decodes")
                    .expect("an encoded frame is a frame");
                assert_eq!(back, message);
            }
            Ok(None) => return,
            Err(agent::FrameError::Json(_) | agent::FrameError::Version(_)) => {}
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check::<agent::Request>(data);
    check::<agent::Response>(data);
});
