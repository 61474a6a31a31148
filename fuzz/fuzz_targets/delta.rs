#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sync_core::delta::fuzz_decode(data));
