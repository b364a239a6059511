#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pycage_fuzz::checks::check_request(data));
