//! `--demo blog`: the users/posts blog the seed articles query (`user(id: 123)` with
//! `username` and `posts { title }`). Seeding is idempotent.

use anyhow::Context;
use polyport_core::{AuthContext, CollectionSpec, Hub, HubError, Origin};
use serde_json::{Value, json};

pub(crate) async fn seed(hub: &Hub, name: &str) -> anyhow::Result<()> {
    match name {
        "blog" => blog(hub).await,
        other => anyhow::bail!("unknown demo '{other}' (available: blog)"),
    }
}

async fn ensure_collection(hub: &Hub, ctx: &AuthContext, spec: Value) -> anyhow::Result<()> {
    let spec: CollectionSpec = serde_json::from_value(spec)?;
    match hub.create_collection(ctx, spec).await {
        Ok(_) | Err(HubError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e).context("creating demo collection"),
    }
}

async fn ensure_record(
    hub: &Hub,
    ctx: &AuthContext,
    coll: &str,
    id: &str,
    data: Value,
) -> anyhow::Result<()> {
    let Value::Object(data) = data else {
        anyhow::bail!("demo record must be an object");
    };
    match hub
        .create_record(ctx, coll, Some(id.to_string()), data)
        .await
    {
        Ok(_) | Err(HubError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating demo record {coll}/{id}")),
    }
}

async fn blog(hub: &Hub) -> anyhow::Result<()> {
    let ctx = AuthContext::system(Origin("demo"));
    ensure_collection(
        hub,
        &ctx,
        json!({
            "name": "users",
            "description": "People who write posts",
            "fields": [
                {"name": "username", "type": "text", "unique": true},
                {"name": "name", "type": "text"},
                {"name": "email", "type": "text"},
            ]
        }),
    )
    .await?;
    ensure_collection(
        hub,
        &ctx,
        json!({
            "name": "posts",
            "description": "Blog posts",
            "fields": [
                {"name": "title", "type": "text", "required": true},
                {"name": "body", "type": "text"},
                {"name": "author", "type": "relation", "collection": "users", "required": true},
                {"name": "tags", "type": "array", "items": {"type": "text"}},
            ]
        }),
    )
    .await?;
    ensure_record(
        hub,
        &ctx,
        "users",
        "123",
        json!({"username": "john_doe", "name": "John Doe", "email": "john.doe@example.com"}),
    )
    .await?;
    ensure_record(hub, &ctx, "posts", "1", json!({"title": "Hello, Polyport", "body": "One server, every API style.", "author": "123", "tags": ["intro"]})).await?;
    ensure_record(hub, &ctx, "posts", "2", json!({"title": "Realtime everywhere", "body": "A write through REST arrives on SSE and WebSocket.", "author": "123", "tags": ["realtime"]})).await?;
    tracing::info!("demo 'blog' seeded: users/123 (john_doe) with posts 1 and 2");
    Ok(())
}
