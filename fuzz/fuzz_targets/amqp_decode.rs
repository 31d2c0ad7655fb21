//! Every byte sequence an AMQP client could send after the protocol header, through the
//! frame codec (frame_max, amq-protocol's method, header and body parsers): must never
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    polyport_amqp::fuzz_decode(data, 4096);
});
