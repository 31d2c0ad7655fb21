//! How a queue was declared, and its bindings as stored: what survives a restart.

use amq_protocol_types::FieldTable;

use crate::naming::Kind;

use super::binding;

/// How a queue was declared.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Declared {
    /// The queue's name.
    pub name: String,
    /// Survives restarts, with its bindings.
    pub durable: bool,
    /// Deleted when its last consumer leaves.
    pub auto_delete: bool,
    /// The connection that owns an exclusive queue.
    #[serde(skip)]
    pub exclusive: Option<u64>,
    /// The log position at declaration: a new queue holds what was published after it.
    pub since: u64,
    /// Every binding but the default exchange's.
    pub bindings: Vec<SavedBinding>,
    /// `x-message-ttl`: milliseconds a message may wait in the queue.
    #[serde(default)]
    pub message_ttl: Option<u64>,
    /// `x-dead-letter-exchange` and `x-dead-letter-routing-key`: where rejected and
    /// expired messages go.
    #[serde(default)]
    pub dead_letter: Option<(String, Option<String>)>,
    /// `x-max-length`, `x-max-length-bytes` and whether `x-overflow` is
    /// `reject-publish` (the newest is refused) rather than `drop-head` (the oldest goes).
    #[serde(default)]
    pub limits: Limits,
    /// `x-expires`: milliseconds the queue may go unused (no consumers, no `get`, no
    /// redeclare) before it is deleted.
    #[serde(default)]
    pub expires: Option<u64>,
}

/// A queue's length limits.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Most ready messages.
    pub max_length: Option<usize>,
    /// Most ready bytes.
    pub max_bytes: Option<usize>,
    /// `reject-publish`: the newest goes, not the oldest.
    pub reject_new: bool,
}

impl Limits {
    /// `bytes` is only asked for under an `x-max-length-bytes`: summing a queue's
    /// payloads on every arrival made each one cost in proportion to the backlog.
    pub(crate) fn over(&self, count: usize, bytes: impl FnOnce() -> usize) -> bool {
        self.max_length.is_some_and(|m| count > m) || self.max_bytes.is_some_and(|m| bytes() > m)
    }
}

/// A binding as stored with a durable queue (or, as a source, with an exchange).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedBinding {
    /// The exchange (for a queue) or the source exchange (for an exchange).
    pub exchange: String,
    /// That exchange's type.
    pub kind: String,
    /// The binding key.
    pub key: String,
    #[serde(default)]
    /// The binding arguments (headers exchanges).
    pub args: FieldTable,
}

impl SavedBinding {
    pub(crate) fn rule(&self) -> binding::Rule {
        binding::Rule {
            kind: Kind::parse(&self.kind).unwrap_or(Kind::Direct),
            key: self.key.clone(),
            args: self.args.clone(),
        }
    }
}
