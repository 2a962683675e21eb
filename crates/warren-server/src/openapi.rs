//! The OpenAPI document, generated from the API types so it cannot drift.

use axum::Json;
use utoipa::OpenApi;
use warren_proto::api;

#[derive(OpenApi)]
#[openapi(
    paths(
        crate::sandboxes::create,
        crate::sandboxes::list,
        crate::sandboxes::get_one,
        crate::sandboxes::set_tags,
        crate::sandboxes::terminate,
        crate::sandboxes::wait,
        crate::sandboxes::exec,
        crate::stream::exec_stream,
        crate::logs::logs,
        crate::tokens::create_workspace,
        crate::tokens::list_workspaces,
        crate::tokens::create_token,
        crate::tokens::list_tokens,
        crate::tokens::revoke_token,
        crate::execs::start,
        crate::execs::list,
        crate::execs::get_one,
        crate::execs::output,
        crate::execs::signal,
        crate::execs::remove,
        crate::execs::attach,
        crate::files::read,
        crate::files::write,
        crate::files::stat,
        crate::files::list,
        crate::files::mkdir,
        crate::files::remove,
        crate::files::rename,
        crate::files::watch,
        crate::files::download_archive,
        crate::files::upload_archive,
        crate::images::list,
        crate::images::inspect,
        crate::images::remove,
        crate::images::gc,
        crate::images::pull,
        crate::images::import,
        crate::builds::build,
        crate::images::export,
        crate::images::push,
        crate::tunnels::list,
        crate::tunnels::create_token,
        crate::tunnels::list_tokens,
        crate::tunnels::revoke_token,
        crate::tunnels::wait_ready,
        crate::tunnels::update_network,
        crate::snapshots::snapshot_filesystem,
        crate::snapshots::snapshot_directory,
        crate::snapshots::mount_image,
        crate::memory::snapshot_memory,
        crate::memory::list,
        crate::memory::get_one,
        crate::memory::remove,
        crate::memory::fork,
        crate::memory::pause,
        crate::memory::resume,
    ),
    modifiers(&BearerAuth),
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
        api::StreamExecStart,
        api::StreamClientMsg,
        api::StreamServerMsg,
        api::TtySize,
        api::FileInfo,
        api::FileList,
        api::FileEvent,
        api::ArchiveResult,
        api::BackgroundExec,
        api::BackgroundExecList,
        api::SignalRequest,
        api::PullImageRequest,
        api::RegistryAuth,
        api::ImageInfo,
        api::ImageLayerInfo,
        api::ImageConfigInfo,
        api::ImageList,
        api::ImageGcReport,
        api::PullProgress,
        api::PullLayer,
        warren_proto::build::BuildEvent,
        warren_proto::build::BuildQuery,
        warren_proto::build::LogStream,
        api::PushImageRequest,
        api::PushImageResult,
        api::PushProgress,
        api::PortSpec,
        api::ReadinessProbe,
        api::UpdateNetworkRequest,
        api::NetworkInfo,
        api::TunnelKind,
        api::Endpoint,
        api::Tunnel,
        api::TunnelList,
        api::ImageMount,
        api::SnapshotFilesystemRequest,
        api::SnapshotDirectoryRequest,
        api::SnapshotImage,
        api::OnIdle,
        api::SnapshotMemoryRequest,
        api::MemorySnapshot,
        api::MemorySnapshotList,
        api::ForkRequest,
        api::ForkResult,
        api::ConnectTokenRequest,
        api::ConnectToken,
        api::ConnectTokenInfo,
        api::ConnectTokenList,
        api::ReadyStatus,
    ))
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the paths refer to.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /v1/openapi.json`
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
