//! A strict check of Kubernetes documents against their k8s-openapi types.
//!
//! k8s-openapi types ignore unknown fields, so a typo deserializes silently. The
//! check deserializes, serializes back and compares with the input: any field that
//! did not survive the round trip is not in the schema.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// `value` as `T`, panicking with `origin` and the path of every field `T` does not
/// know.
pub fn strict<T: DeserializeOwned + Serialize>(value: &Value, origin: &str) -> T {
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{origin}: does not deserialize: {e}\n{value:#}"));
    let back = serde_json::to_value(&typed).expect("a typed value serializes");
    let mut lost = Vec::new();
    compare(value, &back, String::new(), &mut lost);
    assert!(
        lost.is_empty(),
        "{origin}: fields not in the schema: {lost:#?}"
    );
    typed
}

fn compare(input: &Value, output: &Value, path: String, lost: &mut Vec<String>) {
    match (input, output) {
        (Value::Null, _) => {}
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                match b.get(k) {
                    Some(w) => compare(v, w, format!("{path}.{k}"), lost),
                    None => lost.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                compare(v, w, format!("{path}[{i}]"), lost);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => lost.push(format!("{path}: {a} became {b}")),
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Known {
        a: u32,
    }

    #[test]
    #[should_panic(expected = "fields not in the schema")]
    fn unknown_fields_fail() {
        super::strict::<Known>(&serde_json::json!({"a": 1, "typo": 2}), "t");
    }

    #[test]
    fn known_fields_pass() {
        let k: Known = super::strict(&serde_json::json!({"a": 1}), "t");
        assert_eq!(k.a, 1);
    }
}
