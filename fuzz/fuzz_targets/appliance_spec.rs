//! Any text as an appliance file: a result or a diagnostic, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(appliance_spec::SpecError::Invalid(d)) =
        appliance_spec::Appliance::parse(text, std::path::Path::new("/fuzz/appliance.toml"))
    {
        // Rendering the diagnostics walks the spans back to lines.
        let _ = d.to_string();
    }
});
