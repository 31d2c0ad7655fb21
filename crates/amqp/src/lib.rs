//! Polyport's AMQP 0-9-1 broker — in progress (issue 11). What is here so far:
//!
//! | concern | file |
//! |---|---|
//! | frames: protocol header, `frame_max`, amq-protocol's parser and generator | `codec.rs` |
//! | exchanges and routing keys on the shared topic tree | `naming.rs` |
//!
//! amq-protocol parses and generates every method; the framing rules, the broker and
//! its mapping onto the Hub are ours. Not yet served by `polyport serve`.

#![allow(dead_code)] // wired into the server with the connection layer (issue 11)

mod codec;
mod naming;
