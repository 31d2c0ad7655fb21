//! Frames on the wire: amq-protocol parses and generates every method, header and body
//! frame; this adds the framing rules a server enforces (the protocol header first, the
//! negotiated `frame_max`) and a tokio codec around them.

use amq_protocol::frame::{AMQPFrame, gen_frame, parse_frame};
use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The only protocol header we speak; a client sending another gets this one back.
pub(crate) const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Frame header (type, channel, size) plus the end octet.
const OVERHEAD: usize = 8;

/// Why the byte stream cannot go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {size} bytes exceeds frame_max {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed frame")]
    Malformed,
    #[error("unsupported protocol header")]
    BadHeader,
}

/// One connection's codec. Until the protocol header has been read, only that is
/// accepted.
pub(crate) struct Codec {
    pub(crate) frame_max: usize,
    header_seen: bool,
}

impl Codec {
    pub(crate) fn new(frame_max: usize) -> Self {
        Self {
            frame_max,
            header_seen: false,
        }
    }
}

/// What the decoder yields.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// The 8-byte protocol header was right.
    Header,
    Frame(Box<AMQPFrame>),
}

impl Decoder for Codec {
    type Item = Incoming;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        if !self.header_seen {
            if src.len() < PROTOCOL_HEADER.len() {
                return Ok(None);
            }
            let ok = &src[..8] == PROTOCOL_HEADER;
            src.advance(8);
            if !ok {
                return Err(CodecError::BadHeader);
            }
            self.header_seen = true;
            return Ok(Some(Incoming::Header));
        }
        if src.len() < 7 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([src[3], src[4], src[5], src[6]]) as usize;
        if size + OVERHEAD > self.frame_max {
            return Err(CodecError::TooLarge {
                size: size + OVERHEAD,
                max: self.frame_max,
            });
        }
        if src.len() < size + OVERHEAD {
            src.reserve(size + OVERHEAD - src.len());
            return Ok(None);
        }
        let frame = match parse_frame(&src[..size + OVERHEAD]) {
            Ok((_, f)) => f,
            Err(_) => return Err(CodecError::Malformed),
        };
        src.advance(size + OVERHEAD);
        Ok(Some(Incoming::Frame(Box::new(frame))))
    }
}

impl Encoder<AMQPFrame> for Codec {
    type Error = CodecError;

    fn encode(&mut self, frame: AMQPFrame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let buf = cookie_factory::gen_simple(gen_frame(&frame), Vec::new())
            .map_err(|_| CodecError::Malformed)?;
        dst.extend_from_slice(&buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::{AMQPClass, channel};

    #[test]
    fn reads_the_header_then_frames_and_enforces_frame_max() {
        let mut c = Codec::new(4096);
        let mut buf = BytesMut::from(&PROTOCOL_HEADER[..]);
        let open = AMQPFrame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        );
        c.encode(open.clone(), &mut buf).unwrap();
        assert!(matches!(
            c.decode(&mut buf).unwrap(),
            Some(Incoming::Header)
        ));
        match c.decode(&mut buf).unwrap() {
            Some(Incoming::Frame(f)) => assert_eq!(*f, open),
            other => panic!("{other:?}"),
        }
        assert!(c.decode(&mut buf).unwrap().is_none());
        let big = AMQPFrame::Body(1, vec![0; 5000]);
        c.encode(big, &mut buf).unwrap();
        assert!(matches!(
            c.decode(&mut buf),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_wrong_header_is_refused() {
        let mut c = Codec::new(4096);
        let mut buf = BytesMut::from(&b"AMQP\x01\x01\x00\x0a"[..]);
        assert!(matches!(c.decode(&mut buf), Err(CodecError::BadHeader)));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut c = Codec::new(4096);
            c.header_seen = true;
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = c.decode(&mut buf) {}
        }
    }
}
