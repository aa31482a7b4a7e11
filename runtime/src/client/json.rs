//! Where two JSON documents differ, for
//! [`assert_json`](super::TestResponse::assert_json) and
//! [`assert_json_contains`](super::TestResponse::assert_json_contains).

use serde_json::Value;

/// How an expected document is compared with the actual one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Compare {
    /// The documents are equal: objects have the same keys.
    Equal,
    /// The actual document contains the expected one: an actual object may
    /// have keys the expected one does not mention. Arrays still match
    /// element by element and have the same length.
    Contains,
}

/// The first place where `actual` does not match `expected`, as a path like
/// `$.users[0].email` followed by what differs there.
pub(super) fn first_difference(
    expected: &Value,
    actual: &Value,
    compare: Compare,
) -> Option<String> {
    difference_at(&mut String::from("$"), expected, actual, compare)
}

fn difference_at(
    path: &mut String,
    expected: &Value,
    actual: &Value,
    compare: Compare,
) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, ev) in e {
                let len = path.len();
                push_key(path, key);
                let found = match a.get(key) {
                    None => Some(format!("{path}: missing (expected {ev})")),
                    Some(av) => difference_at(path, ev, av, compare),
                };
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            if compare == Compare::Contains {
                return None;
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
                let found = difference_at(path, ev, av, compare);
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

    fn diff(expected: Value, actual: Value, compare: Compare) -> Option<String> {
        first_difference(&expected, &actual, compare)
    }

    #[test]
    fn equal_documents_have_no_difference() {
        let doc = json!({"a": [1, {"b": null}], "c": "x"});
        assert_eq!(diff(doc.clone(), doc.clone(), Compare::Equal), None);
        assert_eq!(diff(doc.clone(), doc, Compare::Contains), None);
    }

    #[test]
    fn equality_reports_missing_and_unexpected_keys() {
        assert_eq!(
            diff(json!({"a": 1, "b": 2}), json!({"a": 1}), Compare::Equal).as_deref(),
            Some("$.b: missing (expected 2)")
        );
        assert_eq!(
            diff(json!({"a": 1}), json!({"a": 1, "b": 2}), Compare::Equal).as_deref(),
            Some("$.b: unexpected key (value 2)")
        );
    }

    #[test]
    fn containment_allows_extra_keys_at_every_depth() {
        let actual = json!({
            "id": 7,
            "user": {"name": "Ada", "roles": ["reader", "writer"], "email": "ada@example.com"},
        });
        assert_eq!(
            diff(
                json!({"user": {"roles": ["reader", "writer"]}}),
                actual.clone(),
                Compare::Contains
            ),
            None
        );
        assert_eq!(
            diff(
                json!({"user": {"roles": ["reader", "admin"]}}),
                actual.clone(),
                Compare::Contains
            )
            .as_deref(),
            Some("$.user.roles[1]: expected \"admin\", got \"writer\"")
        );
        assert_eq!(
            diff(
                json!({"user": {"roles": ["reader"]}}),
                actual.clone(),
                Compare::Contains
            )
            .as_deref(),
            Some("$.user.roles: expected 1 elements, got 2")
        );
        assert_eq!(
            diff(json!({"user": {"phone": null}}), actual, Compare::Contains).as_deref(),
            Some("$.user.phone: missing (expected null)")
        );
    }

    #[test]
    fn array_elements_are_matched_as_subsets() {
        let actual = json!([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]);
        assert_eq!(
            diff(
                json!([{"id": 1}, {"id": 2}]),
                actual.clone(),
                Compare::Contains
            ),
            None
        );
        assert_eq!(
            diff(json!([{"id": 1}, {"id": 3}]), actual, Compare::Contains).as_deref(),
            Some("$[1].id: expected 3, got 2")
        );
    }

    #[test]
    fn types_must_match() {
        assert_eq!(
            diff(json!({"a": {"b": 1}}), json!({"a": [1]}), Compare::Contains).as_deref(),
            Some("$.a: expected {\"b\":1}, got [1]")
        );
        assert_eq!(
            diff(json!("1"), json!(1), Compare::Contains).as_deref(),
            Some("$: expected \"1\", got 1")
        );
    }

    #[test]
    fn odd_keys_are_quoted_in_paths() {
        assert_eq!(
            diff(
                json!({"a b": {"x-y": 1}}),
                json!({"a b": {"x-y": 2}}),
                Compare::Equal
            )
            .as_deref(),
            Some("$[\"a b\"][\"x-y\"]: expected 1, got 2")
        );
    }
}
