//! STOMP destinations as RabbitMQ's STOMP plugin maps them onto exchanges and queues.

/// A destination a frame names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Destination {
    /// `/topic/{key}`: `amq.topic` with that routing key (the shared tree).
    Topic(String),
    /// `/queue/{name}`: a durable shared queue, declared on first use.
    Queue(String),
    /// `/amq/queue/{name}`: a queue that must already exist.
    AmqQueue(String),
    /// `/exchange/{name}[/{key}]`.
    Exchange { name: String, key: String },
    /// `/temp-queue/{name}`: a private reply queue of this session.
    TempQueue(String),
    /// `/reply-queue/{name}`: another session's temp queue (what `reply-to` is rewritten to).
    ReplyQueue(String),
}

/// Why a destination is refused (the ERROR frame's `message`).
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum BadDestination {
    #[error(
        "'{0}' is not a valid destination (use /topic/, /queue/, /amq/queue/, /exchange/ or /temp-queue/)"
    )]
    Unknown(String),
    #[error("destination '{0}' names no queue or exchange")]
    Empty(String),
}

impl Destination {
    pub(crate) fn parse(s: &str) -> Result<Self, BadDestination> {
        let non_empty = |rest: &str| {
            if rest.is_empty() {
                Err(BadDestination::Empty(s.to_string()))
            } else {
                Ok(rest.to_string())
            }
        };
        if let Some(rest) = s.strip_prefix("/topic/") {
            return Ok(Self::Topic(non_empty(rest)?));
        }
        if let Some(rest) = s.strip_prefix("/queue/") {
            return Ok(Self::Queue(non_empty(rest)?));
        }
        if let Some(rest) = s.strip_prefix("/amq/queue/") {
            return Ok(Self::AmqQueue(non_empty(rest)?));
        }
        if let Some(rest) = s.strip_prefix("/temp-queue/") {
            return Ok(Self::TempQueue(non_empty(rest)?));
        }
        if let Some(rest) = s.strip_prefix("/reply-queue/") {
            return Ok(Self::ReplyQueue(non_empty(rest)?));
        }
        if let Some(rest) = s.strip_prefix("/exchange/") {
            let (name, key) = rest.split_once('/').unwrap_or((rest, ""));
            return Ok(Self::Exchange {
                name: non_empty(name)?,
                key: key.to_string(),
            });
        }
        Err(BadDestination::Unknown(s.to_string()))
    }

    /// The exchange and routing key a SEND to it publishes with.
    pub(crate) fn publish_target(&self) -> (String, String) {
        match self {
            Self::Topic(k) => ("amq.topic".into(), k.clone()),
            Self::Queue(q) | Self::AmqQueue(q) | Self::ReplyQueue(q) => (String::new(), q.clone()),
            Self::TempQueue(q) => (String::new(), q.clone()),
            Self::Exchange { name, key } => (name.clone(), key.clone()),
        }
    }

    /// How a delivery from a queue names where it came from: `/queue/{name}` for a queue
    /// the client named, else the exchange and key it was published with.
    pub(crate) fn of_delivery(exchange: &str, routing_key: &str) -> String {
        match exchange {
            "" => format!("/queue/{routing_key}"),
            "amq.topic" => format!("/topic/{routing_key}"),
            x => format!("/exchange/{x}/{routing_key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_destinations() {
        assert_eq!(
            Destination::parse("/topic/a.b"),
            Ok(Destination::Topic("a.b".into()))
        );
        assert_eq!(
            Destination::parse("/queue/jobs"),
            Ok(Destination::Queue("jobs".into()))
        );
        assert_eq!(
            Destination::parse("/amq/queue/q1"),
            Ok(Destination::AmqQueue("q1".into()))
        );
        assert_eq!(
            Destination::parse("/exchange/logs"),
            Ok(Destination::Exchange {
                name: "logs".into(),
                key: String::new()
            })
        );
        assert_eq!(
            Destination::parse("/exchange/x/a/b"),
            Ok(Destination::Exchange {
                name: "x".into(),
                key: "a/b".into()
            })
        );
        assert!(matches!(
            Destination::parse("/queue/"),
            Err(BadDestination::Empty(_))
        ));
        assert!(matches!(
            Destination::parse("jobs"),
            Err(BadDestination::Unknown(_))
        ));
        assert_eq!(Destination::of_delivery("amq.topic", "a.b"), "/topic/a.b");
        assert_eq!(Destination::of_delivery("", "jobs"), "/queue/jobs");
    }
}
