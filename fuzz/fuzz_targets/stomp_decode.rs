//! Every byte sequence a STOMP client could send, through the frame codec (header
//! escaping, content-length, limits): must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    polyport_stomp::fuzz_decode(data);
});
