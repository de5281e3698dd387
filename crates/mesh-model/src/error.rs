use std::fmt;

/// What was wrong with a registry document, and where it came from.
///
/// Carries the origin (a file path, an etcd key, a Kubernetes object) and the
/// 1-based document index so an operator can find the bad document without guessing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError {
    /// Where the documents came from, e.g. a file path.
    pub origin: String,
    /// 1-based position of the document in a multi-document stream, if known.
    pub document: Option<usize>,
    /// `Kind/namespace/name` of the offending object, when it could be read.
    pub object: Option<String>,
    /// What went wrong.
    pub kind: ModelErrorKind,
}

/// The classes of bad input, so callers and tests can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelErrorKind {
    /// The text is not valid YAML or JSON.
    #[error("malformed document: {0}")]
    Malformed(String),
    /// `kind`/`apiVersion` name nothing the mesh knows.
    #[error(
        "unknown kind {kind:?} (apiVersion {api_version:?}); known kinds: Namespace, Service, Workload, AuthorizationPolicy, TrafficPolicy"
    )]
    UnknownKind {
        /// The document's `kind`.
        kind: String,
        /// The document's `apiVersion`.
        api_version: String,
    },
    /// A required field is missing or a field has the wrong shape.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field path, e.g. `spec.ports[1].port`.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Two objects of the same kind share a namespace and name.
    #[error("duplicate {0}: already defined in document {1}")]
    Duplicate(String, usize),
}

impl ModelError {
    pub(crate) fn new(origin: &str, document: Option<usize>, kind: ModelErrorKind) -> Self {
        ModelError {
            origin: origin.to_string(),
            document,
            object: None,
            kind,
        }
    }

    pub(crate) fn with_object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(doc) = self.document {
            write!(f, ": document {doc}")?;
        }
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for ModelError {}
