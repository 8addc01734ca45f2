//! A mapped topic's record: each field of a step event found at its JSON
//! pointer (RFC 6901) in the topic's own format. What is found is the raw
//! JSON there, borrowed from the record, for [`super::event`] to check as it
//! checks junction's own format; a value that is not JSON, or a pointer
//! that passes through something that is not an object or an array, is bad
//! input naming the pointer.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::value::RawValue;

use crate::config::{Field, Mapping};
use crate::input::event::BadInput;
use crate::input::scan;
use crate::names::Reason;

/// The raw JSON at each of the mapping's pointers (`None`: nothing there).
pub fn fields<'a>(mapping: &Mapping, value: &'a [u8]) -> Result<scan::Fields<'a>, BadInput> {
    let root = std::str::from_utf8(value)
        .ok()
        .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
        .ok_or_else(|| match serde_json::from_slice::<serde::de::IgnoredAny>(value) {
            Err(e) => BadInput::new(Reason::NotJson, format!("the value is not valid JSON: {e}")),
            Ok(_) => BadInput::new(Reason::NotJson, "the value is not valid UTF-8 JSON"),
        })?;
    let at = |pointer: Option<&str>| pointer.map_or(Ok(None), |p| resolve(root, p));
    Ok(scan::Fields {
        workflow_id: at(Some(&mapping.workflow_id))?,
        workflow_type: at(pointer_of(mapping.workflow_type.as_ref()))?,
        step: at(pointer_of(Some(&mapping.step)))?,
        status: at(mapping.status.as_deref())?,
        event_id: at(mapping.event_id.as_deref())?,
        occurred_at: at(mapping.occurred_at.as_deref())?,
        payload: at(mapping.payload.as_deref())?,
    })
}

fn pointer_of(field: Option<&Field>) -> Option<&str> {
    match field {
        Some(Field::Pointer(p)) => Some(p.as_str()),
        _ => None,
    }
}

/// The raw JSON at `pointer` in `root`; `None` when nothing is there (a
/// missing member, an index past the end, or `null`, which a field treats
/// as absent).
fn resolve<'a>(root: &'a RawValue, pointer: &str) -> Result<Option<&'a str>, BadInput> {
    let mut at = root;
    for token in pointer.split('/').skip(1) {
        let token = unescape(token);
        let text = at.get().trim_start();
        let next = if text.starts_with('{') {
            let members: HashMap<Cow<'a, str>, &'a RawValue> =
                serde_json::from_str(at.get()).map_err(|e| bad(pointer, e))?;
            members.get(token.as_ref()).copied()
        } else if text.starts_with('[') {
            let items: Vec<&'a RawValue> = serde_json::from_str(at.get()).map_err(|e| bad(pointer, e))?;
            token.parse::<usize>().ok().and_then(|i| items.get(i).copied())
        } else {
            None
        };
        match next {
            Some(n) => at = n,
            None => return Ok(None),
        }
    }
    let text = at.get().trim();
    Ok((text != "null").then_some(text))
}

fn unescape(token: &str) -> Cow<'_, str> {
    if token.contains('~') {
        Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(token)
    }
}

fn bad(pointer: &str, e: serde_json::Error) -> BadInput {
    BadInput::new(Reason::NotJson, format!("cannot read `{pointer}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn pointers_find_members_items_and_escaped_names() {
        let v = raw(r#"{"a":{"b/c":[10,{"d~e":"x"}]},"n":null,"s":"t"}"#);
        assert_eq!(resolve(v, "/a/b~1c/0").unwrap(), Some("10"));
        assert_eq!(resolve(v, "/a/b~1c/1/d~0e").unwrap(), Some(r#""x""#));
        assert_eq!(resolve(v, "").unwrap(), Some(v.get()));
        assert_eq!(resolve(v, "/a/missing").unwrap(), None);
        assert_eq!(resolve(v, "/a/b~1c/7").unwrap(), None);
        assert_eq!(resolve(v, "/s/deeper").unwrap(), None, "a string has no members");
        assert_eq!(resolve(v, "/n").unwrap(), None, "null is nothing");
    }
}
