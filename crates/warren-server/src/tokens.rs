//! `/v1/workspaces` and `/v1/tokens`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use warren_proto::api::{self, CreateTokenRequest, CreateWorkspaceRequest, ErrorCode};
use warren_store::TokenInfo;

use crate::auth::Auth;
use crate::sandboxes::body;
use crate::{ApiError, AppState};

fn iso(ms: i64) -> String {
    crate::sandboxes::to_iso(ms)
}

fn token_to_api(t: &TokenInfo, secret: Option<String>) -> api::Token {
    api::Token {
        id: t.id.clone(),
        name: t.name.clone(),
        workspace_id: t.workspace_id.clone(),
        admin: t.is_admin,
        created_at: iso(t.created_at),
        revoked_at: t.revoked_at.map(iso),
        token: secret,
    }
}

fn require_admin(auth: &Auth) -> Result<(), ApiError> {
    if auth.0.is_admin {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "this needs an admin token",
        ))
    }
}

/// `POST /v1/workspaces` (admin)
#[utoipa::path(post, path = "/v1/workspaces", tag = "auth", request_body = api::CreateWorkspaceRequest,
    responses((status = 201, body = api::Workspace), (status = 400, description = "invalid_argument / invalid_json", body = api::ErrorBody), (status = 401, description = "unauthenticated", body = api::ErrorBody), (status = 403, description = "forbidden", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_workspace(
    State(state): State<AppState>,
    auth: Auth,
    req: Result<Json<CreateWorkspaceRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<api::Workspace>), ApiError> {
    let req = body(req)?;
    require_admin(&auth)?;
    let ws = state.store.create_workspace(&req.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(api::Workspace {
            id: ws.id,
            name: ws.name,
            created_at: iso(ws.created_at),
        }),
    ))
}

/// `GET /v1/workspaces`: all of them for admins, else the caller's own.
#[utoipa::path(get, path = "/v1/workspaces", tag = "auth",
    responses((status = 200, body = Vec<api::Workspace>)), security(("bearer" = [])))]
pub async fn list_workspaces(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<Vec<api::Workspace>>, ApiError> {
    let all = state.store.list_workspaces().await?;
    Ok(Json(
        all.into_iter()
            .filter(|w| auth.0.is_admin || w.id == auth.0.workspace_id)
            .map(|w| api::Workspace {
                id: w.id,
                name: w.name,
                created_at: iso(w.created_at),
            })
            .collect(),
    ))
}

/// `POST /v1/tokens`: returns the secret once.
#[utoipa::path(post, path = "/v1/tokens", tag = "auth", request_body = api::CreateTokenRequest,
    responses((status = 201, description = "The token with its secret (shown once)", body = api::Token), (status = 400, description = "invalid_argument / invalid_json", body = api::ErrorBody), (status = 401, description = "unauthenticated", body = api::ErrorBody), (status = 403, description = "forbidden", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_token(
    State(state): State<AppState>,
    auth: Auth,
    req: Result<Json<CreateTokenRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<api::Token>), ApiError> {
    let req = body(req)?;
    let ws = req
        .workspace_id
        .clone()
        .unwrap_or_else(|| auth.0.workspace_id.clone());
    if (ws != auth.0.workspace_id || req.admin) && !auth.0.is_admin {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only admin tokens may create admin tokens or tokens for another workspace",
        ));
    }
    let t = state.store.create_token(&ws, &req.name, req.admin).await?;
    Ok((
        StatusCode::CREATED,
        Json(token_to_api(&t.info, Some(t.plaintext))),
    ))
}

/// `GET /v1/tokens`: the caller's workspace's tokens (never their secrets).
#[utoipa::path(get, path = "/v1/tokens", tag = "auth",
    responses((status = 200, body = Vec<api::Token>)), security(("bearer" = [])))]
pub async fn list_tokens(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<Vec<api::Token>>, ApiError> {
    let list = state.store.list_tokens(&auth.0.workspace_id).await?;
    Ok(Json(list.iter().map(|t| token_to_api(t, None)).collect()))
}

/// `POST /v1/tokens/{id}/revoke`
#[utoipa::path(post, path = "/v1/tokens/{id}/revoke", tag = "auth", params(("id" = String, Path, description = "Token id")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.store.revoke_token(&auth.0.workspace_id, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            format!("token {id} not found"),
        ))
    }
}
