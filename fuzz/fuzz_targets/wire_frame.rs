#![no_main]
//! `lendmesh_tests::fuzz::wire_frame` under libFuzzer (see its doc there, and fuzz/README.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| lendmesh_tests::fuzz::wire_frame(data));
