//! A tonic codec over `prost_reflect::DynamicMessage`: the message types are known only
//! at run time (from the catalog), so decoding takes the method's descriptor.

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Encodes responses and decodes requests of one method.
pub(crate) struct DynCodec {
    input: MessageDescriptor,
}

impl DynCodec {
    pub(crate) fn new(input: MessageDescriptor) -> Self {
        Self { input }
    }
}

/// A response message: built for this call, or already encoded (an event's message,
/// encoded once and shared by every stream that sends it).
pub(crate) enum Reply {
    Message(DynamicMessage),
    Encoded(Bytes),
}

impl From<DynamicMessage> for Reply {
    fn from(m: DynamicMessage) -> Self {
        Reply::Message(m)
    }
}

impl Codec for DynCodec {
    type Encode = Reply;
    type Decode = DynamicMessage;
    type Encoder = DynEncoder;
    type Decoder = DynDecoder;

    fn encoder(&mut self) -> DynEncoder {
        DynEncoder
    }

    fn decoder(&mut self) -> DynDecoder {
        DynDecoder(self.input.clone())
    }
}

pub(crate) struct DynEncoder;

impl Encoder for DynEncoder {
    type Item = Reply;
    type Error = Status;

    fn encode(&mut self, item: Reply, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Reply::Message(m) => m
                .encode(dst)
                .map_err(|e| Status::internal(format!("encoding the response failed: {e}"))),
            Reply::Encoded(b) => {
                dst.put_slice(&b);
                Ok(())
            }
        }
    }
}

pub(crate) struct DynDecoder(MessageDescriptor);

impl Decoder for DynDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.0.clone(), bytes)
            .map(Some)
            .map_err(|e| {
                Status::invalid_argument(format!(
                    "request is not a valid {}: {e}",
                    self.0.full_name()
                ))
            })
    }
}
