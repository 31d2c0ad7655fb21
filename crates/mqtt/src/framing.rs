//! Packets over a byte stream, with rmqtt-codec's decoder and encoder.
//!
//! Written by hand instead of `tokio_util::codec::Framed` because Framed gives every
//! connection two 8 KiB buffers up front (and re-reserves them in `from_parts`); an MQTT
//! broker holds many mostly idle connections, so buffers here start small, grow with
//! the traffic and shrink back once a burst is over. Writes are only buffered by
//! [`Conn::feed`]; [`Conn::flush`] sends what accumulated, so a batch of messages or
//! acknowledgements costs one write.

use bytes::BytesMut;
use rmqtt_codec::error::{DecodeError, EncodeError};
use rmqtt_codec::{MqttCodec, MqttPacket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use crate::connection::Transport;

/// Read buffer capacity of a new or quiet connection.
const SMALL: usize = 128;
/// A buffer that grew past this during a burst is replaced once it is empty again.
const SHRINK_ABOVE: usize = 64 * 1024;

pub(crate) struct Conn {
    io: Transport,
    pub(crate) codec: MqttCodec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    eof: bool,
}

impl Conn {
    pub(crate) fn new(io: Transport, codec: MqttCodec) -> Self {
        Self {
            io,
            codec,
            rbuf: BytesMut::with_capacity(SMALL),
            wbuf: BytesMut::new(),
            eof: false,
        }
    }

    /// The next packet; `None` at end of stream. Cancel-safe: bytes read stay buffered.
    pub(crate) async fn next(&mut self) -> Option<Result<MqttPacket, DecodeError>> {
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some((p, _))) => return Some(Ok(p)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            if self.eof {
                return None;
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > SHRINK_ABOVE {
                self.rbuf = BytesMut::with_capacity(SMALL);
            }
            if self.rbuf.capacity() - self.rbuf.len() < SMALL / 2 {
                // Grow geometrically so a large packet takes few reads.
                let more = self.rbuf.len().max(SMALL);
                self.rbuf.reserve(more);
            }
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) => {
                    self.eof = true;
                    if self.rbuf.is_empty() {
                        return None;
                    }
                }
                Ok(_) => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Starts a fresh read buffer if nothing is buffered. Decoding splits packets off
    /// the buffer, which turns it into a shared one with a header of its own: a
    /// connection that goes quiet after its CONNECT would keep that for its lifetime.
    pub(crate) fn settle(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::with_capacity(SMALL);
        }
    }

    /// A packet decoded from what is already buffered, without reading.
    pub(crate) fn try_next(&mut self) -> Option<Result<MqttPacket, DecodeError>> {
        match self.codec.decode(&mut self.rbuf) {
            Ok(Some((p, _))) => Some(Ok(p)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Buffers a packet for the next [`Conn::flush`].
    pub(crate) fn feed(&mut self, p: MqttPacket) -> Result<(), EncodeError> {
        self.codec.encode(p, &mut self.wbuf)
    }

    /// Buffers bytes a caller encoded itself (see [`crate::wire::encode_plain_publish`]).
    pub(crate) fn feed_with(&mut self, encode: impl FnOnce(&mut BytesMut)) {
        encode(&mut self.wbuf);
    }

    pub(crate) fn has_pending_writes(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Writes everything buffered.
    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all_buf(&mut self.wbuf).await?;
            self.io.flush().await?;
        }
        if self.wbuf.capacity() > SHRINK_ABOVE {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }

    /// Buffers a packet and flushes.
    pub(crate) async fn send(&mut self, p: MqttPacket) -> std::io::Result<()> {
        self.feed(p).map_err(std::io::Error::other)?;
        self.flush().await
    }
}
