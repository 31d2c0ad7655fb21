//! The catalog: every gRPC method Polyport serves right now, compiled (with protox, no
//! protoc needed) from the shipped `proto/polyport/v1/*.proto` plus the proto generated
//! from the collections, and rebuilt when a collection changes.

use std::collections::HashMap;

use polyport_core::schema::CollectionMap;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

use crate::GrpcError;
use crate::proto_gen::{COLLECTIONS_FILE, assign, collections_proto};

/// The shipped generic API.
pub const RECORDS_PROTO: &str = include_str!("../../../proto/polyport/v1/records.proto");
/// The shipped topic API.
pub const TOPICS_PROTO: &str = include_str!("../../../proto/polyport/v1/topics.proto");
/// The shipped webhook registry API.
pub const WEBHOOKS_PROTO: &str = include_str!("../../../proto/polyport/v1/webhooks.proto");

/// What a method does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    RecordsGet,
    RecordsList,
    RecordsCreate,
    RecordsUpdate,
    RecordsDelete,
    RecordsWatch,
    TopicsPublish,
    TopicsSubscribe,
    TopicsChat,
    WebhooksList,
    WebhooksCreate,
    WebhooksUpdate,
    WebhooksDelete,
    Get(String),
    List(String),
    Create(String),
    Update(String),
    Delete(String),
    Watch(String),
}

/// One servable method.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub(crate) op: Op,
    pub(crate) input: MessageDescriptor,
    pub(crate) output: MessageDescriptor,
    pub(crate) client_streaming: bool,
    pub(crate) server_streaming: bool,
}

/// Compiled descriptors and the routing table (`/pkg.Service/Method` → route).
pub(crate) struct Catalog {
    pub(crate) pool: DescriptorPool,
    pub(crate) routes: HashMap<String, Route>,
}

/// Serves our in-memory files; the well-known types come from protox's Google resolver.
struct Memory(Vec<(&'static str, String)>);

impl FileResolver for Memory {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.iter().find(|(n, _)| *n == name) {
            Some((n, src)) => File::from_source(n, src),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

impl Catalog {
    pub(crate) fn build(colls: &CollectionMap) -> Result<Catalog, GrpcError> {
        let generated = collections_proto(colls);
        let mut chain = ChainFileResolver::new();
        chain.add(Memory(vec![
            ("polyport/v1/records.proto", RECORDS_PROTO.to_string()),
            ("polyport/v1/topics.proto", TOPICS_PROTO.to_string()),
            ("polyport/v1/webhooks.proto", WEBHOOKS_PROTO.to_string()),
            (COLLECTIONS_FILE, generated),
        ]));
        chain.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(chain);
        compiler.include_imports(true);
        compiler
            .open_files([
                "polyport/v1/records.proto",
                "polyport/v1/topics.proto",
                "polyport/v1/webhooks.proto",
                COLLECTIONS_FILE,
            ])
            .map_err(|e| GrpcError::Proto(e.to_string()))?;
        let pool = compiler.descriptor_pool();
        let names = assign(colls);
        let mut routes = HashMap::new();
        for svc in pool.services() {
            for m in svc.methods() {
                let op = match (svc.full_name(), m.name()) {
                    ("polyport.v1.Records", "Get") => Op::RecordsGet,
                    ("polyport.v1.Records", "List") => Op::RecordsList,
                    ("polyport.v1.Records", "Create") => Op::RecordsCreate,
                    ("polyport.v1.Records", "Update") => Op::RecordsUpdate,
                    ("polyport.v1.Records", "Delete") => Op::RecordsDelete,
                    ("polyport.v1.Records", "Watch") => Op::RecordsWatch,
                    ("polyport.v1.Topics", "Publish") => Op::TopicsPublish,
                    ("polyport.v1.Topics", "Subscribe") => Op::TopicsSubscribe,
                    ("polyport.v1.Topics", "Chat") => Op::TopicsChat,
                    ("polyport.v1.Webhooks", "ListEndpoints") => Op::WebhooksList,
                    ("polyport.v1.Webhooks", "CreateEndpoint") => Op::WebhooksCreate,
                    ("polyport.v1.Webhooks", "UpdateEndpoint") => Op::WebhooksUpdate,
                    ("polyport.v1.Webhooks", "DeleteEndpoint") => Op::WebhooksDelete,
                    (sname, mname) => {
                        let Some((coll, n)) = names.iter().find(|(_, n)| {
                            format!("polyport.collections.{}", n.service()) == sname
                        }) else {
                            continue;
                        };
                        let (msg, plural) = (&n.message, &n.plural);
                        let c = coll.clone();
                        if mname == format!("Get{msg}") {
                            Op::Get(c)
                        } else if mname == format!("List{plural}") {
                            Op::List(c)
                        } else if mname == format!("Create{msg}") {
                            Op::Create(c)
                        } else if mname == format!("Update{msg}") {
                            Op::Update(c)
                        } else if mname == format!("Delete{msg}") {
                            Op::Delete(c)
                        } else if mname == format!("Watch{plural}") {
                            Op::Watch(c)
                        } else {
                            continue;
                        }
                    }
                };
                routes.insert(
                    format!("/{}/{}", svc.full_name(), m.name()),
                    Route {
                        op,
                        input: m.input(),
                        output: m.output(),
                        client_streaming: m.is_client_streaming(),
                        server_streaming: m.is_server_streaming(),
                    },
                );
            }
        }
        Ok(Catalog { pool, routes })
    }

    /// Every service name, for health and reflection.
    pub(crate) fn service_names(&self) -> Vec<String> {
        self.pool
            .services()
            .map(|s| s.full_name().to_string())
            .collect()
    }

    /// The descriptors as a `FileDescriptorSet` (for reflection).
    pub(crate) fn file_descriptor_set(&self) -> prost_types::FileDescriptorSet {
        prost_types::FileDescriptorSet {
            file: self.pool.file_descriptor_protos().cloned().collect(),
        }
    }
}
