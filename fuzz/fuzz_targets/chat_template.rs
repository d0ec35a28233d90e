#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| modelship_model::fuzz::chat_template(bytes));
