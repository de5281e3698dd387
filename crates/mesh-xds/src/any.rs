//! Packing and unpacking `google.protobuf.Any` with a clear error on mismatch.

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// Why an `Any` could not be read as the expected message.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The `Any` holds a different type.
    #[error("expected {expected}, got {actual}")]
    WrongType {
        /// The type URL that was wanted.
        expected: String,
        /// The type URL that arrived.
        actual: String,
    },
    /// The bytes do not decode as the expected message.
    #[error("cannot decode {type_url}: {source}")]
    Decode {
        /// The type URL being decoded.
        type_url: String,
        /// The protobuf error.
        source: prost::DecodeError,
    },
}

/// Packs `message` into an `Any` with its canonical type URL.
pub fn pack<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// Unpacks `any` as `M`, checking the type URL first.
pub fn unpack<M: Message + Name + Default>(any: &Any) -> Result<M, UnpackError> {
    let expected = M::type_url();
    if any.type_url != expected {
        return Err(UnpackError::WrongType {
            expected,
            actual: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_slice()).map_err(|source| UnpackError::Decode {
        type_url: expected,
        source,
    })
}
