//! Batched relation loading (one store query per relation per request layer, not per
//! record): forward relations by id, reverse relations by the referencing field.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use polyport_core::query::{Filter, ListQuery, Literal, Op};
use polyport_core::{AuthContext, Hub, Record};

/// Largest number of referencing records a reverse relation returns per parent.
pub(crate) const MAX_REVERSE: usize = 1000;

/// `(collection, id)` → record, read as the request's caller.
pub(crate) struct RecordLoader(pub(crate) Hub, pub(crate) AuthContext);

/// Errors are shared across waiting resolvers, hence `Arc`.
pub(crate) type LoadError = Arc<polyport_core::HubError>;

impl Loader<(String, String)> for RecordLoader {
    type Value = Record;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), Record>, LoadError> {
        let mut by_coll: HashMap<&str, Vec<String>> = HashMap::new();
        for (c, id) in keys {
            by_coll.entry(c).or_default().push(id.clone());
        }
        let mut out = HashMap::new();
        for (c, ids) in by_coll {
            let filter = any_of("id", &ids);
            let q = ListQuery {
                filter,
                sort: Vec::new(),
                limit: ids.len().max(1),
                cursor: None,
                count: false,
            };
            let page = self
                .0
                .list_records(&self.1, c, &q)
                .await
                .map_err(Arc::new)?;
            for r in page.items {
                out.insert((c.to_string(), r.id.clone()), r);
            }
        }
        Ok(out)
    }
}

/// `(referencing collection, field, target id)` → the records whose `field` holds it.
pub(crate) struct ReverseLoader(pub(crate) Hub, pub(crate) AuthContext);

impl Loader<(String, String, String)> for ReverseLoader {
    type Value = Vec<Record>;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[(String, String, String)],
    ) -> Result<HashMap<(String, String, String), Vec<Record>>, LoadError> {
        let mut groups: HashMap<(&str, &str), Vec<String>> = HashMap::new();
        for (c, f, id) in keys {
            groups.entry((c, f)).or_default().push(id.clone());
        }
        let mut out: HashMap<(String, String, String), Vec<Record>> = HashMap::new();
        for k in keys {
            out.insert(k.clone(), Vec::new());
        }
        for ((c, f), ids) in groups {
            let q = ListQuery {
                filter: any_of(f, &ids),
                sort: Vec::new(),
                limit: (MAX_REVERSE * ids.len()).min(50_000),
                cursor: None,
                count: false,
            };
            let page = self
                .0
                .list_records(&self.1, c, &q)
                .await
                .map_err(Arc::new)?;
            for r in page.items {
                let target = r.data.get(f).and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                });
                if let Some(t) = target
                    && let Some(list) = out.get_mut(&(c.to_string(), f.to_string(), t))
                    && list.len() < MAX_REVERSE
                {
                    list.push(r);
                }
            }
        }
        Ok(out)
    }
}

/// `field = id1 || field = id2 || …` as a balanced filter AST (no text round-trip, no
/// escaping, and logarithmic depth so SQLite's expression-depth limit is never near).
fn any_of(field: &str, ids: &[String]) -> Option<Filter> {
    match ids {
        [] => None,
        [id] => Some(Filter::Cmp {
            path: vec![field.to_string()],
            op: Op::Eq,
            value: Literal::Str(id.clone()),
        }),
        _ => {
            let (a, b) = ids.split_at(ids.len() / 2);
            Some(Filter::Or(
                Box::new(any_of(field, a)?),
                Box::new(any_of(field, b)?),
            ))
        }
    }
}
