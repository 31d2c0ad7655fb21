//! REST for identities: who am I (anyone), and stored users and API keys (admins).
//! A key's full text is in the creation answer only.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use polyport_core::auth::{KeySpec, Role};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::error::ApiResult;
use crate::gate::Caller;
use crate::params::json_body;
use crate::rest::{body, json_response};

/// `GET /api/auth/me`.
pub(crate) async fn me(Caller(caller): Caller) -> ApiResult<Response> {
    let body = match &caller.identity {
        Some(i) => json!({
            "id": i.id,
            "role": i.role,
            "via": i.via,
            "admin": i.is_admin(),
            "scopes": i.scopes,
            "claims": i.claims,
        }),
        None => json!({"id": null, "anonymous": true, "admin": false}),
    };
    Ok(json_response(StatusCode::OK, body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    role: Option<Role>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    role: Option<Role>,
}

pub(crate) async fn list_users(
    State(app): State<AppState>,
    Caller(caller): Caller,
) -> ApiResult<Response> {
    let users = app.hub.users(&caller)?;
    Ok(json_response(StatusCode::OK, json!({ "items": users })))
}

pub(crate) async fn create_user(
    State(app): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let u: NewUser = json_body(&headers, &body(b)?)?;
    let view = app
        .hub
        .create_user(&caller, &u.name, &u.password, u.role)
        .await?;
    Ok(json_response(StatusCode::CREATED, json!(view)))
}

pub(crate) async fn get_user(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let user = app
        .hub
        .users(&caller)?
        .into_iter()
        .find(|u| u.name == name)
        .ok_or_else(|| polyport_core::HubError::NotFound(format!("user '{name}'")))?;
    Ok(json_response(StatusCode::OK, json!(user)))
}

pub(crate) async fn patch_user(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let p: UserPatch = json_body(&headers, &body(b)?)?;
    let view = app
        .hub
        .update_user(&caller, &name, p.password.as_deref(), p.role)
        .await?;
    Ok(json_response(StatusCode::OK, json!(view)))
}

pub(crate) async fn delete_user(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    app.hub.delete_user(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn list_keys(
    State(app): State<AppState>,
    Caller(caller): Caller,
) -> ApiResult<Response> {
    let keys = app.hub.api_keys(&caller)?;
    Ok(json_response(StatusCode::OK, json!({ "items": keys })))
}

pub(crate) async fn create_key(
    State(app): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let spec: KeySpec = json_body(&headers, &body(b)?)?;
    let (key, view) = app.hub.create_api_key(&caller, spec).await?;
    let mut out = json!(view);
    out["key"] = json!(key);
    out["note"] = json!("store the key now: it is not shown again");
    Ok(json_response(StatusCode::CREATED, out))
}

pub(crate) async fn revoke_key(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.hub.revoke_api_key(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
