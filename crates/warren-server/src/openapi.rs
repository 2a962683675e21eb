//! The OpenAPI document, generated from the API types so it cannot drift.

use axum::Json;
use utoipa::OpenApi;
use warren_proto::api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Warren API",
        version = "1",
        description = "Sandboxes for untrusted code. Every call needs `Authorization: Bearer <token>`. Errors are `{\"error\":{\"code\",\"message\"}}` with a code from ErrorCode."
    ),
    components(schemas(
        api::CreateSandboxRequest,
        api::Sandbox,
        api::SandboxState,
        api::Termination,
        api::TerminationReason,
        api::SandboxList,
        api::SetTagsRequest,
        api::ExecRequest,
        api::ExecResult,
        api::Workspace,
        api::CreateWorkspaceRequest,
        api::CreateTokenRequest,
        api::Token,
        api::ErrorBody,
        api::ErrorDetail,
        api::ErrorCode,
    ))
)]
pub struct ApiDoc;

/// `GET /v1/openapi.json`
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
