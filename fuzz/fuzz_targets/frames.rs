#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sync_core::wire::fuzz_frames(data));
