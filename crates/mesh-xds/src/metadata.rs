//! Small helpers for `google.protobuf.Struct` metadata, which carries the mesh's
//! extras (identities, workload names) inside standard Envoy resources.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

/// The filter-metadata key under which the mesh stores its endpoint fields.
pub const FILTER: &str = "mesh.io";

/// A string `Value`.
pub fn string(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

/// A number `Value`.
pub fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

/// A `Struct` from `(key, value)` pairs.
pub fn structure<'a>(fields: impl IntoIterator<Item = (&'a str, Value)>) -> Struct {
    Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

/// Envoy `Metadata` with the mesh's fields under [`FILTER`].
pub fn mesh_metadata<'a>(fields: impl IntoIterator<Item = (&'a str, Value)>) -> Metadata {
    Metadata {
        filter_metadata: HashMap::from([(FILTER.to_string(), structure(fields))]),
        ..Default::default()
    }
}

/// The mesh's fields of `metadata`, if any.
pub fn mesh_fields(metadata: Option<&Metadata>) -> Option<&Struct> {
    metadata?.filter_metadata.get(FILTER)
}

/// A string field of a `Struct`.
pub fn get_str<'a>(s: &'a Struct, key: &str) -> Option<&'a str> {
    match s.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(v) => Some(v),
        _ => None,
    }
}

/// A numeric field of a `Struct`.
pub fn get_number(s: &Struct, key: &str) -> Option<f64> {
    match s.fields.get(key)?.kind.as_ref()? {
        Kind::NumberValue(v) => Some(*v),
        _ => None,
    }
}
