#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| modelship_gateway::fuzz::request_head(bytes));
