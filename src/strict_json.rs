//! JSON parsing that refuses duplicate object members. RFC 8259 leaves their meaning open and
//! parsers disagree (first wins, last wins), so a body with one could mean one thing to a
//! validator and another to whatever reads it next; `serde_json::Value` silently keeps the last.

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrictJsonError {
    /// Not JSON at all (syntax, trailing data, nesting too deep).
    Syntax,
    /// A member name appears twice in one object; the RFC 6901 pointer of the second one.
    Duplicate(String),
}

/// Parses `bytes` as one JSON document, refusing duplicate members at any depth.
pub fn from_slice(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Node {
        pointer: String::new(),
        duplicate: &duplicate,
    }
    .deserialize(&mut de);
    if let Some(pointer) = duplicate.into_inner() {
        return Err(StrictJsonError::Duplicate(pointer));
    }
    let value = value.map_err(|_| StrictJsonError::Syntax)?;
    de.end().map_err(|_| StrictJsonError::Syntax)?;
    Ok(value)
}

/// RFC 6901: `~` and `/` in a member name are escaped in a pointer.
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

struct Node<'a> {
    pointer: String,
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Node {
            pointer: format!("{}/{}", self.pointer, out.len()),
            duplicate: self.duplicate,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let pointer = format!("{}/{}", self.pointer, escape_pointer(&key));
            if out.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(pointer);
                return Err(A::Error::custom("duplicate member"));
            }
            let value = map.next_value_seed(Node {
                pointer,
                duplicate: self.duplicate,
            })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_at_any_depth_with_their_pointer() {
        let dup = |s: &str| from_slice(s.as_bytes()).unwrap_err();
        assert_eq!(
            dup(r#"{"first_name":"Bad Name!","first_name":"Bobby"}"#),
            StrictJsonError::Duplicate("/first_name".into())
        );
        assert_eq!(
            dup(r#"{"upi":{"device":{"fingerprint":"a","fingerprint":"b"}}}"#),
            StrictJsonError::Duplicate("/upi/device/fingerprint".into())
        );
        assert_eq!(
            dup(r#"[{"a":1},{"b/~":1,"b/~":2}]"#),
            StrictJsonError::Duplicate("/1/b~1~0".into())
        );
        // Escapes are decoded before comparing: "a" and "\u0061" are the same member.
        assert_eq!(
            dup(r#"{"a":1,"\u0061":2}"#),
            StrictJsonError::Duplicate("/a".into())
        );
    }

    #[test]
    fn valid_json_parses_like_serde_json() {
        let s = r#"{"a":[1,-2,3.5,"x",null,true],"b":{"c":{}},"d":18446744073709551615}"#;
        assert_eq!(
            from_slice(s.as_bytes()).unwrap(),
            serde_json::from_str::<Value>(s).unwrap()
        );
        assert_eq!(from_slice(b"{} x"), Err(StrictJsonError::Syntax));
        assert_eq!(from_slice(b"{\"a\":"), Err(StrictJsonError::Syntax));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(from_slice(deep.as_bytes()), Err(StrictJsonError::Syntax));
    }
}
