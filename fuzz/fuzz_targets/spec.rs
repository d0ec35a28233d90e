#![no_main]
//! A deployment spec as `modelship deploy -f` reads it: parsed, then
//! validated. Either step may refuse it; neither may panic.
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(spec) = serde_saphyr::from_str::<modelship_types::ModelDeployment>(text) {
        let _ = spec.validate();
    }
});
