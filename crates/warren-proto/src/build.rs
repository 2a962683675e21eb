//! Image builds (`POST /v1/images/build`): the query options and the
//! NDJSON events the build streams back. See `docs/images.md#building-images`.
//!
//! The request body is a plain tar of the build context with the recipe
//! inside; the response is `application/x-ndjson`, one [`BuildEvent`] per
//! line, ending with exactly one `done` or `error` event.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Path of the recipe inside the context when the request names none.
pub const DEFAULT_RECIPE_PATH: &str = "Dockerfile";

/// Query of `POST /v1/images/build`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BuildQuery {
    /// `name[:tag]` given to the built image (`-t`).
    pub tag: String,
    /// Path of the recipe inside the context (default `Dockerfile`).
    pub recipe: Option<String>,
    /// Run every step even when the cache has its result.
    #[serde(default)]
    pub no_cache: bool,
    /// Give `RUN` steps network access (default: on when the node has
    /// networking).
    pub network: Option<bool>,
    /// Longest a single `RUN` step may take, in seconds (default and cap
    /// from the node's build settings).
    pub step_timeout_secs: Option<u64>,
    /// Memory of each step's sandbox, in MiB (default and cap from the
    /// node's build settings).
    pub memory_mib: Option<u64>,
}

/// Which output stream a [`BuildEvent::Log`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line of a build's NDJSON stream, tagged by `"event"`.
///
/// Order: per step a `step`, then (for `RUN`) any number of `log`, then
/// `step_done`; finally one `done` or `error`. Step indexes count from 1
/// and include the `FROM` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum BuildEvent {
    /// A step starts (or is taken from the cache: `cached`).
    Step {
        index: u32,
        total: u32,
        /// The instruction as written (continuations joined; at most 512
        /// characters).
        text: String,
        cached: bool,
    },
    /// Output of the running step, as UTF-8 text (invalid bytes replaced).
    Log { stream: LogStream, data: String },
    /// A step finished: the image it produced.
    StepDone {
        index: u32,
        image_id: String,
        seconds: f64,
        cached: bool,
    },
    /// The build succeeded; `name` points at `image_id`.
    Done {
        image_id: String,
        name: String,
        seconds: f64,
        /// Steps taken from the cache, of `steps`.
        cached_steps: u32,
        steps: u32,
    },
    /// The build failed. `code` is stable (`invalid_recipe`,
    /// `build_step_failed`, `build_step_timeout`, `image_not_found`, ...).
    Error {
        code: String,
        message: String,
        /// The failing step's index, when a step failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<u32>,
        /// The recipe line of the failing instruction.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        line: Option<u32>,
        /// A failing `RUN`'s exit code (128 + signal when killed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
}

impl BuildEvent {
    /// Whether this event ends the stream.
    pub fn is_final(&self) -> bool {
        matches!(self, BuildEvent::Done { .. } | BuildEvent::Error { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_json_lines() {
        let e = BuildEvent::Step {
            index: 1,
            total: 3,
            text: "FROM host".into(),
            cached: true,
        };
        let j = serde_json::to_string(&e).unwrap();
        assert_eq!(
            j,
            r#"{"event":"step","index":1,"total":3,"text":"FROM host","cached":true}"#
        );
        let err: BuildEvent = serde_json::from_str(
            r#"{"event":"error","code":"build_step_failed","message":"m","step":2,"exit_code":3}"#,
        )
        .unwrap();
        assert!(err.is_final());
        assert!(matches!(
            err,
            BuildEvent::Error {
                exit_code: Some(3),
                line: None,
                ..
            }
        ));
    }
}
