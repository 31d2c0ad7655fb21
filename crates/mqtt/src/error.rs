//! Every way an MQTT exchange can fail, with its reason code (MQTT 5 §2.4) and the
//! text a client sees, in one place. A 3.1.1 client has no reason codes: it sees the
//! connection close, or the 0x80 failure of a SUBACK.

use polyport_core::HubError;

/// Why a packet was refused or a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Reason {
    #[error("unspecified error")]
    Unspecified,
    #[error("malformed packet")]
    Malformed,
    #[error("protocol error")]
    ProtocolError,
    #[error("not authorized")]
    NotAuthorized,
    #[error("session could not be stored")]
    ServerUnavailable,
    /// DISCONNECT's word for "cannot serve you now" (0x88 is CONNACK's only).
    #[error("server busy: the store is unavailable")]
    ServerBusy,
    #[error("server shutting down")]
    ShuttingDown,
    #[error("keep-alive timeout")]
    KeepAliveTimeout,
    #[error("another connection took over this client id")]
    TakenOver,
    #[error("invalid topic filter")]
    FilterInvalid,
    #[error("a PUBLISH topic must be non-empty and contain no wildcards")]
    TopicInvalid,
    #[error("packet identifier not found")]
    PacketIdNotFound,
    #[error("receive maximum exceeded")]
    ReceiveMaxExceeded,
    #[error("topic alias out of range")]
    AliasOutOfRange,
    #[error("unknown topic alias")]
    AliasUnknown,
    #[error("packet too large")]
    TooLarge,
    #[error("payload is not valid UTF-8 though declared so")]
    PayloadFormat,
    #[error("a session that expires at once cannot be made persistent at DISCONNECT")]
    ExpiryAtDisconnect,
    #[error("this connection holds its maximum of subscriptions")]
    QuotaExceeded,
}

impl Reason {
    /// The MQTT 5 reason code.
    pub(crate) fn code(self) -> u8 {
        match self {
            Reason::Unspecified => 0x80,
            Reason::Malformed => 0x81,
            Reason::ProtocolError | Reason::ExpiryAtDisconnect => 0x82,
            Reason::NotAuthorized => 0x87,
            Reason::ServerUnavailable => 0x88,
            Reason::ServerBusy => 0x89,
            Reason::ShuttingDown => 0x8B,
            Reason::KeepAliveTimeout => 0x8D,
            Reason::TakenOver => 0x8E,
            Reason::FilterInvalid => 0x8F,
            Reason::TopicInvalid => 0x90,
            Reason::PacketIdNotFound => 0x92,
            Reason::ReceiveMaxExceeded => 0x93,
            Reason::AliasOutOfRange | Reason::AliasUnknown => 0x94,
            Reason::TooLarge => 0x95,
            Reason::PayloadFormat => 0x99,
            Reason::QuotaExceeded => 0x97,
        }
    }

    /// A refusal from the Hub, as MQTT says it.
    pub(crate) fn from_hub(e: &HubError) -> Self {
        match e {
            HubError::Forbidden(_) | HubError::Unauthenticated(_) => Reason::NotAuthorized,
            HubError::InvalidTopic(_) => Reason::TopicInvalid,
            HubError::InvalidFilter(_) => Reason::FilterInvalid,
            HubError::LimitReached(_) => Reason::QuotaExceeded,
            _ => Reason::Unspecified,
        }
    }

    /// A SUBACK failure code: 3.1.1 knows only 0x80.
    pub(crate) fn suback_code(self, ver: crate::wire::Ver) -> u8 {
        match ver {
            crate::wire::Ver::V3 => 0x80,
            crate::wire::Ver::V5 => self.code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_specs() {
        assert_eq!(Reason::ReceiveMaxExceeded.code(), 0x93);
        assert_eq!(Reason::AliasUnknown.code(), 0x94);
        assert_eq!(
            Reason::from_hub(&HubError::Forbidden("x".into())),
            Reason::NotAuthorized
        );
        assert_eq!(
            Reason::FilterInvalid.suback_code(crate::wire::Ver::V3),
            0x80
        );
    }
}
