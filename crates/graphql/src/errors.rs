//! Every GraphQL error carries `extensions.code` and, for field errors, a `path`:
//! resolver errors get their code from `gql_err` (the Hub's codes); request-level errors
//! (parse, validation) get one here, and field errors get the path async-graphql's
//! dynamic schema leaves empty.

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextResolve, NextValidation,
    ResolveInfo,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{
    PathSegment, QueryPathNode, QueryPathSegment, ServerError, ServerResult, ValidationResult,
    Value, Variables,
};

/// Code for a query that does not parse.
pub(crate) const PARSE_FAILED: &str = "graphql_parse_failed";
/// Code for a query that fails validation (unknown field, wrong type, too deep, …).
pub(crate) const VALIDATION_FAILED: &str = "graphql_validation_failed";

/// Installs the error-shaping extension.
pub(crate) struct ErrorShape;

impl ExtensionFactory for ErrorShape {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorShapeExt)
    }
}

struct ErrorShapeExt;

fn with_code(mut e: ServerError, code: &'static str) -> ServerError {
    let ext = e.extensions.get_or_insert_with(Default::default);
    if ext.get("code").is_none() {
        ext.set("code", code);
    }
    e
}

fn path_of(node: &QueryPathNode<'_>) -> Vec<PathSegment> {
    let mut out = Vec::new();
    let mut cur = Some(node);
    while let Some(n) = cur {
        out.push(match n.segment {
            QueryPathSegment::Name(s) => PathSegment::Field(s.to_string()),
            QueryPathSegment::Index(i) => PathSegment::Index(i),
        });
        cur = n.parent;
    }
    out.reverse();
    out
}

#[async_trait::async_trait]
impl Extension for ErrorShapeExt {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        next.run(ctx, query, variables)
            .await
            .map_err(|e| with_code(e, PARSE_FAILED))
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errs| {
            errs.into_iter()
                .map(|e| with_code(e, VALIDATION_FAILED))
                .collect()
        })
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        let path = info.path_node;
        next.run(ctx, info).await.map_err(|mut e| {
            if e.path.is_empty() {
                e.path = path_of(path);
            }
            e
        })
    }
}
