//! Every request body a SOAP client could send, through the XML layer, the envelope
//! checks and the parameter decoding: must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    polyport_soap::fuzz_envelope(data);
});
