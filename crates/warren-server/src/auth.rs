//! Bearer-token authentication as an extractor: handlers that take an
//! [`Auth`] only run for a valid, unrevoked token.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use warren_proto::api::ErrorCode;
use warren_store::Principal;

use crate::{ApiError, AppState};

/// The authenticated caller.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthenticated,
                    "missing Authorization: Bearer header",
                )
            })?;
        let value = header.to_str().map_err(|_| {
            ApiError::new(ErrorCode::Unauthenticated, "malformed Authorization header")
        })?;
        let token = value
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthenticated,
                    "expected Authorization: Bearer <token>",
                )
            })?;
        match state.store.authenticate(token).await? {
            Some(p) => Ok(Auth(p)),
            None => Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "unknown or revoked token",
            )),
        }
    }
}
