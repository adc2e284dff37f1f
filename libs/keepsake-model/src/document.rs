//! A stored document: the compact JSON text of one JSON object.
//!
//! Documents are validated once, when a change is accepted (`Document::from_object`), and from
//! then on travel as text: decoding a segment and folding it into state never parses JSON, which
//! is what keeps replay fast. Parsing happens only where the content matters (merge patches).

use std::fmt;
use std::sync::Arc;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The compact JSON text of a JSON object.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Document(Arc<str>);

impl Document {
    /// Serializes a JSON object compactly.
    pub fn from_object(object: &Map<String, Value>) -> Self {
        // Serializing a `Map` of `Value`s cannot fail: keys are strings and values are JSON.
        let text = serde_json::to_string(object).unwrap_or_else(|_| String::from("{}"));
        Self(Arc::from(text))
    }

    /// Serializes any JSON value (tests and tools; devices' documents arrive as text).
    pub fn from_value(value: &Value) -> Self {
        let text = serde_json::to_string(value).unwrap_or_else(|_| String::from("null"));
        Self(Arc::from(text))
    }

    /// What a document's text is, without building it: whether it is a JSON object, and its
    /// `@type` if it has a string one. Scans the text once and allocates nothing for the rest.
    pub fn probe(&self) -> Probe {
        #[derive(Deserialize)]
        struct TypeOnly<'a> {
            #[serde(rename = "@type", borrow, default)]
            ty: Option<std::borrow::Cow<'a, str>>,
        }
        let trimmed = self.0.trim_start();
        if !trimmed.starts_with('{') {
            return Probe::NotAnObject;
        }
        match serde_json::from_str::<TypeOnly<'_>>(&self.0) {
            Ok(t) => Probe::Object {
                json_type: t.ty.map(|c| c.into_owned()),
            },
            // An object whose @type is not a string: not a valid type either.
            Err(_) => Probe::BadType,
        }
    }

    /// Wraps text read back from a segment or checkpoint. The text was validated when the change
    /// was accepted; corrupt text surfaces as an error from [`Document::to_object`].
    pub fn from_stored(text: impl Into<Arc<str>>) -> Self {
        Self(text.into())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Size of the JSON text in bytes (what document limits count).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty text, which no valid document has.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the document back into a JSON object.
    pub fn to_object(&self) -> Result<Map<String, Value>, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl fmt::Debug for Document {
    // Document contents are user data: debug output (and so logs) shows only the size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Document({} bytes)", self.0.len())
    }
}

/// What [`Document::probe`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The text is not a JSON object.
    NotAnObject,
    /// A JSON object whose `@type` is present but not a string.
    BadType,
    /// A JSON object, with its `@type` if it has one.
    Object {
        /// The `@type` value.
        json_type: Option<String>,
    },
}

impl<'de> Deserialize<'de> for Document {
    /// Keeps the JSON text as sent (validated JSON; any value — staging checks it is an object).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let text: Box<str> = raw.into();
        if text.is_empty() {
            return Err(D::Error::custom("empty document"));
        }
        Ok(Self(Arc::from(text)))
    }
}

impl Serialize for Document {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Borrowed: the stored text is written as it is (checked, not copied or re-built).
        let raw: &serde_json::value::RawValue =
            serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn object_round_trips_and_debug_hides_content() {
        let Value::Object(map) = json!({"name": {"full": "Ada"}, "n": 1}) else {
            panic!("literal is an object")
        };
        let doc = Document::from_object(&map);
        assert_eq!(doc.to_object().ok(), Some(map));
        assert_eq!(format!("{doc:?}"), format!("Document({} bytes)", doc.len()));
        assert!(!format!("{doc:?}").contains("Ada"));
        let as_json = serde_json::to_value(&doc).ok();
        assert_eq!(as_json, Some(json!({"name": {"full": "Ada"}, "n": 1})));
    }
}
