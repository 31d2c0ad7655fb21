//! STOMP frames (1.0, 1.1, 1.2): bytes in, typed frames out, and back. Never sees a
//! socket or the Hub.
//!
//! Written here: no maintained crate decodes STOMP server-side with the spec's header
//! escaping, `content-length` bodies and limits.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The STOMP versions Polyport speaks, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// STOMP 1.0 (no header escaping, no NACK).
    V1_0,
    /// STOMP 1.1.
    V1_1,
    /// STOMP 1.2 (ACK by `id`, `\r` escaped).
    V1_2,
}

impl Version {
    /// As `accept-version` and `version` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1_0 => "1.0",
            Self::V1_1 => "1.1",
            Self::V1_2 => "1.2",
        }
    }

    /// One of `accept-version`'s entries.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "1.0" => Some(Self::V1_0),
            "1.1" => Some(Self::V1_1),
            "1.2" => Some(Self::V1_2),
            _ => None,
        }
    }
}

/// Every STOMP command, client's and server's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `CONNECT`.
    Connect,
    /// `STOMP`.
    Stomp,
    /// `SEND`.
    Send,
    /// `SUBSCRIBE`.
    Subscribe,
    /// `UNSUBSCRIBE`.
    Unsubscribe,
    /// `ACK`.
    Ack,
    /// `NACK`.
    Nack,
    /// `BEGIN`.
    Begin,
    /// `COMMIT`.
    Commit,
    /// `ABORT`.
    Abort,
    /// `DISCONNECT`.
    Disconnect,
    /// `CONNECTED`.
    Connected,
    /// `MESSAGE`.
    Message,
    /// `RECEIPT`.
    Receipt,
    /// `ERROR`.
    Error,
}

impl Command {
    /// The command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::Stomp => "STOMP",
            Self::Send => "SEND",
            Self::Subscribe => "SUBSCRIBE",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::Ack => "ACK",
            Self::Nack => "NACK",
            Self::Begin => "BEGIN",
            Self::Commit => "COMMIT",
            Self::Abort => "ABORT",
            Self::Disconnect => "DISCONNECT",
            Self::Connected => "CONNECTED",
            Self::Message => "MESSAGE",
            Self::Receipt => "RECEIPT",
            Self::Error => "ERROR",
        }
    }

    fn parse(s: &[u8]) -> Option<Self> {
        Some(match s {
            b"CONNECT" => Self::Connect,
            b"STOMP" => Self::Stomp,
            b"SEND" => Self::Send,
            b"SUBSCRIBE" => Self::Subscribe,
            b"UNSUBSCRIBE" => Self::Unsubscribe,
            b"ACK" => Self::Ack,
            b"NACK" => Self::Nack,
            b"BEGIN" => Self::Begin,
            b"COMMIT" => Self::Commit,
            b"ABORT" => Self::Abort,
            b"DISCONNECT" => Self::Disconnect,
            b"CONNECTED" => Self::Connected,
            b"MESSAGE" => Self::Message,
            b"RECEIPT" => Self::Receipt,
            b"ERROR" => Self::Error,
            _ => return None,
        })
    }

    /// CONNECT, STOMP and CONNECTED headers are never escaped (1.1 and 1.2 say so).
    fn escapes(self, v: Version) -> bool {
        v >= Version::V1_1 && !matches!(self, Self::Connect | Self::Stomp | Self::Connected)
    }
}

/// One frame. Headers keep their order; a repeated header's first value wins.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// What the frame asks.
    pub command: Command,
    /// Headers in order, unescaped.
    pub headers: Vec<(String, String)>,
    /// The body, exactly.
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: Command) -> Self {
        Self {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the decoder yields: a frame, or a heart-beat (an EOL between frames).
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// A whole frame.
    Frame(Frame),
    /// An EOL between frames.
    HeartBeat,
}

/// Why a frame could not be read; the text goes into the ERROR frame.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    /// Over `max_frame`.
    #[error("frame too large: more than {0} bytes")]
    TooLarge(usize),
    /// Over `max_headers`.
    #[error("too many headers: more than {0}")]
    TooManyHeaders(usize),
    /// A line over `max_header_line`.
    #[error("header line too long: more than {0} bytes")]
    HeaderTooLong(usize),
    /// Not a STOMP command.
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    /// A header line without `:`.
    #[error("malformed header line '{0}' (expected name:value)")]
    MalformedHeader(String),
    /// An escape the spec does not define.
    #[error("undefined escape sequence '\\{0}' in a header")]
    BadEscape(char),
    /// Headers must be UTF-8.
    #[error("headers are not UTF-8")]
    NotUtf8,
    /// Not a number.
    #[error("invalid content-length '{0}'")]
    BadContentLength(String),
    /// The body overran its `content-length`.
    #[error("the body of content-length {0} is not followed by a NUL octet")]
    MissingNul(usize),
    /// The socket failed.
    #[error("connection read failed: {0}")]
    Io(String),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e.to_string())
    }
}

/// Limits checked before anything is buffered past them.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest whole frame (headers and body).
    pub max_frame: usize,
    /// Most headers in one frame.
    pub max_headers: usize,
    /// Longest header line.
    pub max_header_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: 4 * 1024 * 1024,
            max_headers: 100,
            max_header_line: 8 * 1024,
        }
    }
}

/// STOMP's framing for `tokio_util::codec::Framed`.
pub struct Codec {
    /// The version agreed in CONNECT (decides header escaping).
    pub version: Version,
    /// What it refuses to buffer past.
    pub limits: Limits,
}

impl Codec {
    /// A codec for a connection that has not sent CONNECT yet.
    pub fn new(limits: Limits) -> Self {
        // Until CONNECT is answered: 1.2's framing (CONNECT itself is never escaped).
        Self {
            version: Version::V1_2,
            limits,
        }
    }
}

impl Decoder for Codec {
    type Item = Incoming;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        // Heart-beats: EOLs where a frame could start.
        let mut eols = 0;
        while eols < src.len() && (src[eols] == b'\n' || src[eols] == b'\r') {
            if src[eols] == b'\r' && src.get(eols + 1).is_none() {
                break; // maybe CRLF: wait for the LF
            }
            eols += 1;
        }
        if eols > 0 {
            src.advance(eols);
            return Ok(Some(Incoming::HeartBeat));
        }
        // The header block ends at the first empty line.
        let Some(head_end) = find_blank_line(src) else {
            if src.len() > self.limits.max_frame {
                return Err(FrameError::TooLarge(self.limits.max_frame));
            }
            let line = src.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            if src.len() - line > self.limits.max_header_line {
                return Err(FrameError::HeaderTooLong(self.limits.max_header_line));
            }
            return Ok(None);
        };
        let (head_len, body_start) = head_end;
        let head = &src[..head_len];
        let mut lines = head
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let command_line = lines.next().unwrap_or_default();
        let command = Command::parse(command_line).ok_or_else(|| {
            FrameError::UnknownCommand(String::from_utf8_lossy(command_line).into_owned())
        })?;
        let escapes = command.escapes(self.version);
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.len() > self.limits.max_header_line {
                return Err(FrameError::HeaderTooLong(self.limits.max_header_line));
            }
            if headers.len() == self.limits.max_headers {
                return Err(FrameError::TooManyHeaders(self.limits.max_headers));
            }
            let text = std::str::from_utf8(line).map_err(|_| FrameError::NotUtf8)?;
            let Some((k, v)) = text.split_once(':') else {
                return Err(FrameError::MalformedHeader(text.to_string()));
            };
            let (k, v) = if escapes {
                (unescape(k)?, unescape(v)?)
            } else {
                (k.to_string(), v.to_string())
            };
            headers.push((k, v));
        }
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| FrameError::BadContentLength(v.clone()))
            })
            .transpose()?;
        let body_len = match length {
            Some(n) => {
                // A content-length near usize::MAX must not wrap around.
                let end = body_start
                    .checked_add(n)
                    .and_then(|e| e.checked_add(1))
                    .filter(|e| *e <= self.limits.max_frame)
                    .ok_or(FrameError::TooLarge(self.limits.max_frame))?;
                if src.len() < end {
                    src.reserve(end - src.len());
                    return Ok(None);
                }
                if src[body_start + n] != 0 {
                    return Err(FrameError::MissingNul(n));
                }
                n
            }
            None => match src[body_start..].iter().position(|b| *b == 0) {
                Some(n) => n,
                None if src.len() > self.limits.max_frame => {
                    return Err(FrameError::TooLarge(self.limits.max_frame));
                }
                None => return Ok(None),
            },
        };
        let mut frame = src.split_to(body_start + body_len + 1).freeze();
        frame.truncate(body_start + body_len);
        let body = frame.slice(body_start..);
        Ok(Some(Incoming::Frame(Frame {
            command,
            headers,
            body,
        })))
    }
}

/// Where the header block ends: (its length without the final EOLs, where the body starts).
fn find_blank_line(src: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(p) = src[i..].iter().position(|b| *b == b'\n') {
        let nl = i + p;
        let next = nl + 1;
        if src.get(next) == Some(&b'\n') {
            let head = if nl > 0 && src[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            return Some((head, next + 1));
        }
        if src.get(next) == Some(&b'\r') && src.get(next + 1) == Some(&b'\n') {
            let head = if nl > 0 && src[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            return Some((head, next + 2));
        }
        if src.get(next).is_none() || (src.get(next) == Some(&b'\r') && src.get(next + 1).is_none())
        {
            return None;
        }
        i = next;
    }
    None
}

fn unescape(s: &str) -> Result<String, FrameError> {
    if !s.contains('\\') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            Some(other) => return Err(FrameError::BadEscape(other)),
            None => return Err(FrameError::BadEscape(' ')),
        }
    }
    Ok(out)
}

fn escape_into(s: &str, v: Version, dst: &mut BytesMut) {
    for c in s.chars() {
        match c {
            '\\' => dst.put_slice(b"\\\\"),
            ':' => dst.put_slice(b"\\c"),
            '\n' => dst.put_slice(b"\\n"),
            '\r' if v >= Version::V1_2 => dst.put_slice(b"\\r"),
            c => {
                let mut b = [0u8; 4];
                dst.put_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
}

/// What the server writes.
pub enum Outgoing {
    /// A frame.
    Frame(Frame),
    /// A lone EOL.
    HeartBeat,
}

impl Encoder<Outgoing> for Codec {
    type Error = std::io::Error;

    fn encode(&mut self, item: Outgoing, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        let f = match item {
            Outgoing::HeartBeat => {
                dst.put_u8(b'\n');
                return Ok(());
            }
            Outgoing::Frame(f) => f,
        };
        let escapes = f.command.escapes(self.version);
        dst.reserve(64 + f.body.len());
        dst.put_slice(f.command.as_str().as_bytes());
        dst.put_u8(b'\n');
        for (k, v) in &f.headers {
            if escapes {
                escape_into(k, self.version, dst);
                dst.put_u8(b':');
                escape_into(v, self.version, dst);
            } else {
                // 1.0 and CONNECTED: an EOL inside would end the header.
                dst.put_slice(k.replace(['\n', '\r'], " ").as_bytes());
                dst.put_u8(b':');
                dst.put_slice(v.replace(['\n', '\r'], " ").as_bytes());
            }
            dst.put_u8(b'\n');
        }
        dst.put_u8(b'\n');
        dst.put_slice(&f.body);
        dst.put_u8(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut Codec, bytes: &[u8]) -> Result<Vec<Incoming>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(i) = codec.decode(&mut buf)? {
            out.push(i);
        }
        Ok(out)
    }

    fn frames(bytes: &[u8]) -> Vec<Frame> {
        decode_all(&mut Codec::new(Limits::default()), bytes)
            .expect("decodes")
            .into_iter()
            .filter_map(|i| match i {
                Incoming::Frame(f) => Some(f),
                Incoming::HeartBeat => None,
            })
            .collect()
    }

    #[test]
    fn a_frame_with_lf_or_crlf_and_heartbeats_between() {
        let f = frames(b"\n\r\nSEND\r\ndestination:/queue/a\r\n\r\nhello\0\nSEND\ndestination:/queue/b\n\nbye\0");
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].get("destination"), Some("/queue/a"));
        assert_eq!(&f[0].body[..], b"hello");
        assert_eq!(&f[1].body[..], b"bye");
    }

    #[test]
    fn content_length_bodies_may_hold_nuls() {
        let f = frames(b"SEND\ndestination:/q\ncontent-length:3\n\na\0b\0");
        assert_eq!(&f[0].body[..], b"a\0b");
        let e = decode_all(
            &mut Codec::new(Limits::default()),
            b"SEND\ncontent-length:1\n\nab\0",
        );
        assert_eq!(e.unwrap_err(), FrameError::MissingNul(1));
    }

    #[test]
    fn escapes_decode_and_unknown_ones_are_errors_but_connect_is_literal() {
        let f = frames(b"SEND\na\\cb:x\\ny\\\\z\\r\n\n\0");
        assert_eq!(f[0].headers[0], ("a:b".into(), "x\ny\\z\r".into()));
        let e = decode_all(&mut Codec::new(Limits::default()), b"SEND\nk:\\t\n\n\0");
        assert_eq!(e.unwrap_err(), FrameError::BadEscape('t'));
        let f = frames(b"CONNECT\npasscode:a\\b\n\n\0");
        assert_eq!(f[0].get("passcode"), Some("a\\b"));
    }

    #[test]
    fn repeated_headers_keep_the_first_value() {
        let f = frames(b"SEND\nfoo:1\nfoo:2\n\n\0");
        assert_eq!(f[0].get("foo"), Some("1"));
    }

    #[test]
    fn partial_input_waits_and_limits_hold() {
        let mut c = Codec::new(Limits {
            max_frame: 64,
            max_headers: 2,
            max_header_line: 24,
        });
        let mut buf = BytesMut::from(&b"SEND\ndestination:/q\n\nhal"[..]);
        assert_eq!(c.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"f\0");
        assert!(matches!(c.decode(&mut buf), Ok(Some(Incoming::Frame(_)))));
        let e = decode_all(&mut c, &[b'x'; 100]).unwrap_err();
        assert!(matches!(
            e,
            FrameError::TooLarge(64) | FrameError::HeaderTooLong(24)
        ));
        let e = decode_all(&mut c, b"SEND\na:1\nb:2\nc:3\n\n\0").unwrap_err();
        assert_eq!(e, FrameError::TooManyHeaders(2));
        let e = decode_all(&mut c, b"SEND\ncontent-length:1000\n\n").unwrap_err();
        assert_eq!(e, FrameError::TooLarge(64));
        let mut wide = Codec::new(Limits {
            max_frame: 64,
            max_headers: 2,
            max_header_line: 64,
        });
        let e = decode_all(
            &mut wide,
            b"SEND\ncontent-length:18446744073709551615\n\nx\0",
        )
        .unwrap_err();
        assert_eq!(
            e,
            FrameError::TooLarge(64),
            "found by cargo fuzz: no overflow"
        );
        let e = decode_all(&mut c, b"FLY\n\n\0").unwrap_err();
        assert_eq!(e, FrameError::UnknownCommand("FLY".into()));
    }

    #[test]
    fn encoding_escapes_headers_by_version() {
        let mut c = Codec::new(Limits::default());
        let mut out = BytesMut::new();
        let f = Frame::new(Command::Message).header("k", "a:b\nc");
        c.encode(Outgoing::Frame(f.clone()), &mut out)
            .expect("encodes");
        assert_eq!(&out[..], b"MESSAGE\nk:a\\cb\\nc\n\n\0");
        let back = frames(&out);
        assert_eq!(back[0].get("k"), Some("a:b\nc"));
        c.version = Version::V1_0;
        out.clear();
        c.encode(Outgoing::Frame(f), &mut out).expect("encodes");
        assert_eq!(&out[..], b"MESSAGE\nk:a:b c\n\n\0");
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut c = Codec::new(Limits { max_frame: 256, max_headers: 8, max_header_line: 64 });
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = c.decode(&mut buf) {}
        }
    }
}
