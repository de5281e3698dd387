//! `Status` objects: the body of every error a real API server returns.

use serde_json::{Value, json};

use super::resources::ResourceType;

/// An API error as a real server reports it: HTTP code, machine-readable reason
/// and message, rendered as a `meta/v1 Status` so clients (kube-rs, client-go)
/// turn it into the same typed error they would get from a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status code (also `Status.code`).
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`, `AlreadyExists`, `Conflict`, `Expired`.
    pub reason: &'static str,
    /// `Status.message`, worded like the real server's.
    pub message: String,
    /// `Status.details`, if any.
    pub details: Option<Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

fn details(t: &ResourceType, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": t.plural});
    if !t.group.is_empty() {
        d["group"] = json!(t.group);
    }
    d
}

impl ApiError {
    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }

    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 404 for an object that does not exist.
    pub fn not_found(t: &ResourceType, name: &str) -> Self {
        ApiError {
            details: Some(details(t, name)),
            ..Self::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", t.qualified()),
            )
        }
    }

    /// 404 for a path that names no served resource.
    pub fn no_resource() -> Self {
        ApiError {
            details: Some(json!({})),
            ..Self::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
    }

    /// 409 for a create whose name is taken.
    pub fn already_exists(t: &ResourceType, name: &str) -> Self {
        ApiError {
            details: Some(details(t, name)),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", t.qualified()),
            )
        }
    }

    /// 409 for an update from a stale resourceVersion (optimistic concurrency).
    pub fn conflict(t: &ResourceType, name: &str) -> Self {
        ApiError {
            details: Some(details(t, name)),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    t.qualified()
                ),
            )
        }
    }

    /// 410 for a resourceVersion older than the compaction point.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 422 for an object that fails validation.
    pub fn invalid(t: &ResourceType, name: &str, message: impl Into<String>) -> Self {
        ApiError {
            details: Some(details(t, name)),
            ..Self::new(
                422,
                "Invalid",
                format!("{} \"{name}\" is invalid: {}", t.kind, message.into()),
            )
        }
    }

    /// 405 for a verb the resource does not support.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 415 for a PATCH content type the server does not know.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 504 for a resourceVersion newer than anything the server has seen.
    pub fn too_large_resource_version(asked: u64, current: u64) -> Self {
        ApiError {
            details: Some(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1
            })),
            ..Self::new(
                504,
                "Timeout",
                format!("Too large resource version: {asked}, current: {current}"),
            )
        }
    }
}
