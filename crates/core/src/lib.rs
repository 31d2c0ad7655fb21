//! Polyport's protocol-neutral core: the four nouns and the one facade.
//!
//! - **Record** ([`record`], [`schema`], [`query`]): JSON documents in collections with
//!   optional schemas, and the filter language lists and subscriptions share.
//! - **Topic** ([`topic`]): the `/`-separated tree with MQTT wildcards.
//! - **Event** ([`event`]): what flows on topics, rendered as CloudEvents 1.0.
//! - **Subscription** ([`subscription`]): filter + start position + optional group/ack.
//!
//! Adapters hold a [`Hub`] and nothing else. Engines implement [`engine::Store`] and
//! deliver committed events to an [`engine::EventSink`] (the in-process [`Bus`]).
//! Nothing here knows any wire protocol.

pub mod adapter;
pub mod admission;
mod announce;
pub mod attributes;
mod audit;
pub mod auth;
mod bus;
pub mod cluster;
pub mod engine;
pub mod error;
pub mod event;
mod group;
mod group_join;
pub mod hot_metrics;
mod hub;
mod identity_hub;
pub mod naming;
pub mod query;
pub mod rate;
pub mod record;
mod records_hub;
pub mod rules;
mod rules_hub;
pub use records_hub::CollectionChanges;
pub mod schema;
pub mod subscription;
pub mod topic;
pub mod webhook;
mod webhook_hub;

pub use announce::{AGREE_WITHIN, Agreement, Announcements};
pub use attributes::{Attributes, Guarantee, Sender};
pub use auth::{AuthContext, Policy};
pub use bus::Bus;
pub use error::{HubError, HubResult};
pub use event::{Durability, Event, EventDraft, EventRef, Notice, Origin};
pub use group::Refilter;
pub use hub::{ExpectedVersion, Hub, HubConfig, PendingPublish, PublishReceipt};
pub use query::{Filter, ListQuery, Page};
pub use record::Record;
pub use schema::{Collection, CollectionSpec, FieldDef, FieldType};
pub use subscription::{
    AckPolicy, Acker, Delivery, Item, Overflow, RecordSelector, SubscribeRequest, Subscription,
};
pub use topic::{Topic, TopicFilter};
