//! Where two JSON documents differ, for
//! [`assert_json`](super::TestResponse::assert_json).

use serde_json::Value;

/// The first place where `actual` differs from `expected`, as a path like
/// `$.users[0].email` followed by what differs there.
pub(super) fn first_difference(expected: &Value, actual: &Value) -> Option<String> {
    difference_at(&mut String::from("$"), expected, actual)
}

fn difference_at(path: &mut String, expected: &Value, actual: &Value) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, ev) in e {
                let len = path.len();
                push_key(path, key);
                let found = match a.get(key) {
                    None => Some(format!("{path}: missing (expected {ev})")),
                    Some(av) => difference_at(path, ev, av),
                };
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            let (key, av) = a.iter().find(|(key, _)| !e.contains_key(*key))?;
            push_key(path, key);
            Some(format!("{path}: unexpected key (value {av})"))
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Some(format!(
                    "{path}: expected {} elements, got {}",
                    e.len(),
                    a.len()
                ));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = difference_at(path, ev, av);
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        _ if expected == actual => None,
        _ => Some(format!("{path}: expected {expected}, got {actual}")),
    }
}

/// Appends `.key`, or `["key"]` when the key is not a plain identifier.
fn push_key(path: &mut String, key: &str) {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        path.push('.');
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&Value::from(key).to_string());
        path.push(']');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn diff(expected: Value, actual: Value) -> Option<String> {
        first_difference(&expected, &actual)
    }

    #[test]
    fn equal_documents_have_no_difference() {
        let doc = json!({"a": [1, {"b": null}], "c": "x"});
        assert_eq!(diff(doc.clone(), doc), None);
    }

    #[test]
    fn equality_reports_missing_and_unexpected_keys() {
        assert_eq!(
            diff(json!({"a": 1, "b": 2}), json!({"a": 1})).as_deref(),
            Some("$.b: missing (expected 2)")
        );
        assert_eq!(
            diff(json!({"a": 1}), json!({"a": 1, "b": 2})).as_deref(),
            Some("$.b: unexpected key (value 2)")
        );
    }

    #[test]
    fn arrays_have_the_same_length_and_elements() {
        assert_eq!(
            diff(json!({"a": [1, 2]}), json!({"a": [1]})).as_deref(),
            Some("$.a: expected 2 elements, got 1")
        );
        assert_eq!(
            diff(json!([{"id": 1}, {"id": 3}]), json!([{"id": 1}, {"id": 2}])).as_deref(),
            Some("$[1].id: expected 3, got 2")
        );
    }

    #[test]
    fn odd_keys_are_quoted_in_paths() {
        assert_eq!(
            diff(json!({"a b": {"x-y": 1}}), json!({"a b": {"x-y": 2}})).as_deref(),
            Some("$[\"a b\"][\"x-y\"]: expected 1, got 2")
        );
    }
}
