//! AMQP 0-9-1 reply codes, and how a failure ends: the channel or the connection.

/// The spec's reply codes used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    NoRoute = 312,
    ConnectionForced = 320,
    AccessRefused = 403,
    NotFound = 404,
    ResourceLocked = 405,
    PreconditionFailed = 406,
    FrameError = 501,
    CommandInvalid = 503,
    ChannelError = 504,
    UnexpectedFrame = 505,
    NotAllowed = 530,
    NotImplemented = 540,
    InternalError = 541,
}

impl Code {
    pub(crate) fn value(self) -> u16 {
        self as u16
    }
}

/// A failure, closing the channel it happened on or the whole connection. `text`
/// starts with the code's name, as RabbitMQ's do (`NOT_FOUND - no queue 'q' …`).
#[derive(Debug)]
pub(crate) enum Closing {
    Channel {
        code: Code,
        text: String,
        class_id: u16,
        method_id: u16,
    },
    Connection {
        code: Code,
        text: String,
        class_id: u16,
        method_id: u16,
    },
}
