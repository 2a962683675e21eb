//! `ApiError`: every failure a handler can return, mapped to a status and a
//! stable code. Internal details are logged, never sent to clients.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use warren_proto::api::{ErrorBody, ErrorCode, ErrorDetail};

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(id: &str) -> Self {
        ApiError::new(
            ErrorCode::SandboxNotFound,
            format!("sandbox {id} not found"),
        )
    }

    /// Logs `err` with its chain and returns an opaque internal error.
    pub fn internal(context: &str, err: &dyn std::error::Error) -> Self {
        let mut chain = err.to_string();
        let mut src = err.source();
        while let Some(s) = src {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            src = s.source();
        }
        tracing::error!(error = %chain, "{context}");
        ApiError::new(
            ErrorCode::Internal,
            format!("{context} failed; see the server log"),
        )
    }
}

impl From<warren_store::StoreError> for ApiError {
    fn from(e: warren_store::StoreError) -> Self {
        match e.code() {
            "name_conflict" => ApiError::new(ErrorCode::NameConflict, e.to_string()),
            "not_found" => ApiError::new(ErrorCode::NotFound, e.to_string()),
            "invalid_argument" => ApiError::invalid(e.to_string()),
            _ => ApiError::internal("state store", &e),
        }
    }
}

impl From<warren_node::NodeError> for ApiError {
    fn from(e: warren_node::NodeError) -> Self {
        // CRIU's log names host paths: logged, not sent.
        if let warren_node::NodeError::Runtime(warren_runtime::RuntimeError::Criu { .. }) = &e {
            let mut err = ApiError::internal("memory snapshot", &e);
            err.code = ErrorCode::SnapshotFailed;
            return err;
        }
        let code = match e.code() {
            "image_not_found" => ErrorCode::ImageNotFound,
            "invalid_image_reference" | "invalid_image_name" | "ambiguous_image_reference" => {
                ErrorCode::InvalidImageReference
            }
            "invalid_argument" | "invalid_user" => ErrorCode::InvalidArgument,
            "image_in_use" => ErrorCode::ImageInUse,
            "image_not_exportable" => ErrorCode::ImageNotExportable,
            "registry_auth" => ErrorCode::RegistryAuth,
            "registry_unreachable" | "registry_error" | "registry_invalid_response" => {
                ErrorCode::RegistryUnavailable
            }
            "registry_insecure_not_allowed" => ErrorCode::RegistryInsecureNotAllowed,
            "digest_mismatch" => ErrorCode::DigestMismatch,
            "no_matching_platform" => ErrorCode::NoMatchingPlatform,
            "invalid_manifest"
            | "invalid_image_archive"
            | "layer_too_large"
            | "unsafe_layer_entry"
            | "unsupported_layer_entry"
            | "unsupported_layer_compression"
            | "invalid_layer_archive" => ErrorCode::InvalidImage,
            // File operations (the file agent's codes).
            "not_found" => ErrorCode::FileNotFound,
            "permission_denied" => ErrorCode::PermissionDenied,
            "not_a_directory" => ErrorCode::NotADirectory,
            "is_a_directory" => ErrorCode::IsADirectory,
            "already_exists" => ErrorCode::FileExists,
            "directory_not_empty" => ErrorCode::DirectoryNotEmpty,
            "no_space" => ErrorCode::NoSpace,
            "read_only" => ErrorCode::ReadOnlyFilesystem,
            "name_too_long" => ErrorCode::NameTooLong,
            "symlink_loop" => ErrorCode::SymlinkLoop,
            "invalid_path" | "invalid_request" => ErrorCode::InvalidPath,
            "cross_device" => ErrorCode::CrossDevice,
            "busy" => ErrorCode::FileBusy,
            "not_a_file" => ErrorCode::NotAFile,
            "limit_exceeded" => ErrorCode::LimitExceeded,
            "io_error" | "fs_agent_failed" => ErrorCode::FileIoError,
            "exec_not_found" => ErrorCode::ExecNotFound,
            "exec_permission_denied" | "exec_format_error" => ErrorCode::ExecPermissionDenied,
            "workdir_not_found" | "workdir_not_directory" => ErrorCode::WorkdirNotFound,
            "sandbox_not_found" | "sandbox_not_running" | "sandbox_unreachable" => {
                ErrorCode::SandboxTerminated
            }
            "capacity_exhausted" => ErrorCode::CapacityExhausted,
            "network_unavailable" => ErrorCode::NetworkUnavailable,
            "snapshot_failed" => ErrorCode::SnapshotFailed,
            "snapshot_corrupt" => ErrorCode::SnapshotCorrupt,
            "snapshot_unavailable" => ErrorCode::SnapshotUnavailable,
            _ => return ApiError::internal("sandbox operation", &e),
        };
        ApiError::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_string(),
                message: self.message,
            },
        };
        (status, Json(body)).into_response()
    }
}

impl From<warren_runtime::RuntimeError> for ApiError {
    fn from(e: warren_runtime::RuntimeError) -> Self {
        warren_node::NodeError::Runtime(e).into()
    }
}
