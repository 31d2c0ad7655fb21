//! Queue arguments (`x-*`): the ones Polyport honours, and a refusal for the rest.

/// Why queue arguments are refused; the text is RabbitMQ's.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArgumentError {
    /// A known argument with a bad value (AMQP `406 PRECONDITION_FAILED`).
    #[error("{0}")]
    Invalid(String),
    /// An argument Polyport does not implement (AMQP `540 NOT_IMPLEMENTED`).
    #[error("{0}")]
    Unsupported(String),
}

/// The `x-*` queue arguments Polyport honours: `x-message-ttl`, `x-dead-letter-exchange`
/// and `x-dead-letter-routing-key`, `x-max-length`, `x-max-length-bytes`, `x-overflow`,
/// `x-expires`; `x-queue-type` `classic` / `quorum` is accepted (queues are always
/// log-backed).
/// Any other is refused rather than silently ignored.
pub fn queue_arguments(args: &amq_protocol_types::FieldTable) -> Result<QueueArgs, ArgumentError> {
    use amq_protocol_types::AMQPValue as V;
    let mut out = QueueArgs::default();
    let mut dlx: Option<String> = None;
    let mut dlk: Option<String> = None;
    for (k, v) in args.inner() {
        let int = match v {
            V::ShortShortInt(n) => Some(i64::from(*n)),
            V::ShortShortUInt(n) => Some(i64::from(*n)),
            V::ShortInt(n) => Some(i64::from(*n)),
            V::ShortUInt(n) => Some(i64::from(*n)),
            V::LongInt(n) => Some(i64::from(*n)),
            V::LongUInt(n) => Some(i64::from(*n)),
            V::LongLongInt(n) => Some(*n),
            _ => None,
        };
        match (k.as_str(), int) {
            ("x-message-ttl", Some(n)) if n >= 0 => out.message_ttl = Some(n as u64),
            ("x-dead-letter-exchange", _) => dlx = Some(crate::values::value_text(v)),
            ("x-dead-letter-routing-key", _) => dlk = Some(crate::values::value_text(v)),
            ("x-max-length", Some(n)) if n >= 0 => out.limits.max_length = Some(n as usize),
            ("x-max-length-bytes", Some(n)) if n >= 0 => out.limits.max_bytes = Some(n as usize),
            ("x-overflow", _) => match crate::values::value_text(v).as_str() {
                "drop-head" => out.limits.reject_new = false,
                "reject-publish" | "reject-publish-dlx" => out.limits.reject_new = true,
                other => {
                    return Err(ArgumentError::Invalid(format!(
                        "PRECONDITION_FAILED - invalid arg 'x-overflow': '{other}'"
                    )));
                }
            },
            ("x-expires", Some(n)) if n > 0 => out.expires = Some(n as u64),
            ("x-queue-type", _) => {
                let kind = crate::values::value_text(v);
                if kind != "classic" && kind != "quorum" {
                    return Err(ArgumentError::Invalid(format!(
                        "PRECONDITION_FAILED - invalid arg 'x-queue-type': '{kind}'"
                    )));
                }
            }
            ("x-message-ttl" | "x-expires" | "x-max-length" | "x-max-length-bytes", _) => {
                return Err(ArgumentError::Invalid(format!(
                    "PRECONDITION_FAILED - invalid arg '{k}': must be a non-negative integer"
                )));
            }
            (other, _) => {
                return Err(ArgumentError::Unsupported(format!(
                    "NOT_IMPLEMENTED - queue argument '{other}' is not supported yet"
                )));
            }
        }
    }
    out.dead_letter = dlx.map(|x| (x, dlk));
    Ok(out)
}

/// The queue arguments that change behaviour.
#[derive(Clone, Debug, Default)]
pub struct QueueArgs {
    /// `x-message-ttl`, milliseconds.
    pub message_ttl: Option<u64>,
    /// `x-dead-letter-exchange` and `x-dead-letter-routing-key`.
    pub dead_letter: Option<(String, Option<String>)>,
    /// `x-max-length`, `x-max-length-bytes`, `x-overflow`.
    pub limits: crate::queue::Limits,
    /// `x-expires`, milliseconds.
    pub expires: Option<u64>,
}
