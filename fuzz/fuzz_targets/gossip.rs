#![no_main]
//! `lendmesh_tests::fuzz::gossip` under libFuzzer (see its doc there, and fuzz/README.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| lendmesh_tests::fuzz::gossip(data));
