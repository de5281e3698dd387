//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and strategic
//! merge patch.
//!
//! Strategic merge patch (and server-side apply, served the same way) merges lists
//! of objects by their `name`, which is the patch merge key of the lists the mesh
//! patches (webhooks, containers, volumes, env); other lists are replaced whole.
//! Directives such as `$patch` and field ownership are not implemented.

use serde_json::Value;

/// Applies an RFC 7386 merge patch to `target` in place.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Applies a strategic merge patch: a merge patch whose lists of named objects
/// merge element by element on `name`.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let named = |v: &Value| {
        v.as_array().is_some_and(|a| {
            !a.is_empty()
                && a.iter()
                    .all(|e| e.get("name").is_some_and(Value::is_string))
        })
    };
    match (target, patch) {
        (Value::Array(t), Value::Array(_)) if named(patch) => {
            for item in patch.as_array().expect("checked") {
                let name = &item["name"];
                match t.iter_mut().find(|e| &e["name"] == name) {
                    Some(existing) => strategic_merge(existing, item),
                    None => t.push(item.clone()),
                }
            }
        }
        (target, Value::Object(p)) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn unescape(s: &str) -> String {
    s.replace("~1", "/").replace("~0", "~")
}

fn tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent<'a>(doc: &'a mut Value, toks: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| format!("missing key {t:?}"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("bad index {t:?}"))?;
                a.get_mut(i)
                    .ok_or_else(|| format!("index {i} out of range"))?
            }
            _ => return Err(format!("cannot descend into {t:?}")),
        };
    }
    Ok(cur)
}

fn get(doc: &Value, path: &str) -> Result<Value, String> {
    doc.pointer(path)
        .cloned()
        .ok_or_else(|| format!("path {path:?} does not exist"))
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let toks = tokens(path)?;
    let (last, init) = toks.split_last().ok_or("cannot remove the root")?;
    match parent(doc, init)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("missing key {last:?}")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("bad index {last:?}"))?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(format!("index {i} out of range"))
            }
        }
        _ => Err(format!("cannot remove {path:?}")),
    }
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let toks = tokens(path)?;
    let Some((last, init)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, init)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| format!("bad index {last:?}"))?;
            if i > a.len() {
                return Err(format!("index {i} out of range"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("cannot add at {path:?}")),
    }
}

/// Applies an RFC 6902 JSON patch; `Err` describes the failing operation.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch must be an array")?;
    for op in ops {
        let path = op["path"].as_str().ok_or("operation without path")?;
        let value = || op.get("value").cloned().ok_or("operation without value");
        let from = || op["from"].as_str().ok_or("operation without from");
        match op["op"].as_str() {
            Some("add") => add(doc, path, value()?)?,
            Some("remove") => {
                remove(doc, path)?;
            }
            Some("replace") => {
                remove(doc, path)?;
                add(doc, path, value()?)?;
            }
            Some("move") => {
                let v = remove(doc, from()?)?;
                add(doc, path, v)?;
            }
            Some("copy") => {
                let v = get(doc, from()?)?;
                add(doc, path, v)?;
            }
            Some("test") => {
                if get(doc, path)? != value()? {
                    return Err(format!("test failed at {path:?}"));
                }
            }
            other => return Err(format!("unknown operation {other:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch() {
        let mut d = json!({"a": {"b": 1, "c": 2}, "l": [1]});
        merge(&mut d, &json!({"a": {"b": null, "d": 3}, "l": [2]}));
        assert_eq!(d, json!({"a": {"c": 2, "d": 3}, "l": [2]}));
    }

    #[test]
    fn strategic_merge_merges_named_lists() {
        let mut doc = serde_json::json!({"webhooks": [
            {"name": "a", "clientConfig": {"service": {"name": "s"}}},
            {"name": "b"}
        ], "args": ["x", "y"]});
        strategic_merge(
            &mut doc,
            &serde_json::json!({"webhooks": [{"name": "a", "clientConfig": {"caBundle": "Q0E="}}], "args": ["z"]}),
        );
        assert_eq!(doc["webhooks"][0]["clientConfig"]["service"]["name"], "s");
        assert_eq!(doc["webhooks"][0]["clientConfig"]["caBundle"], "Q0E=");
        assert_eq!(doc["webhooks"][1]["name"], "b");
        assert_eq!(doc["args"], serde_json::json!(["z"]));
    }

    #[test]
    fn json_patch_ops() {
        let mut d = json!({"spec": {"containers": [{"name": "app"}]}, "metadata": {}});
        json_patch(
            &mut d,
            &json!([
                {"op": "add", "path": "/spec/containers/-", "value": {"name": "proxy"}},
                {"op": "add", "path": "/metadata/annotations", "value": {"a~b/c": "x"}},
                {"op": "test", "path": "/metadata/annotations/a~0b~1c", "value": "x"},
                {"op": "replace", "path": "/spec/containers/0/name", "value": "main"},
                {"op": "copy", "from": "/spec/containers/1", "path": "/spec/initContainers"},
                {"op": "remove", "path": "/spec/containers/1"}
            ]),
        )
        .unwrap();
        assert_eq!(d["spec"]["containers"], json!([{"name": "main"}]));
        assert_eq!(d["spec"]["initContainers"], json!({"name": "proxy"}));
        assert!(json_patch(&mut d, &json!([{"op": "test", "path": "/x", "value": 1}])).is_err());
    }
}
