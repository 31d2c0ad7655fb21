//! Every byte sequence a client could send, through version detection, CONNECT and the
//! packet decoder with our normalisation: must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    polyport_mqtt::fuzz_decode(data, 64 * 1024);
});
