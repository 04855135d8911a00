#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stook_fuzz::parquet(data));
