//! A stored document: the compact JSON text of one JSON object.
//!
//! Documents are validated once, when a change is staged ([`Document::probe`]: one scan of the
//! text, no tree built), and from then on travel as text: decoding a segment and folding it into
//! state never parses JSON, which is what keeps replay fast. Parsing happens only where the
//! content matters (merge patches).
//!
//! Valid means more than "JSON syntax": the text must also be what strict parsers such as
//! serde_json read back — no lone UTF-16 surrogate escapes, no number beyond a 64-bit float, no
//! nesting deeper than [`MAX_DEPTH`] — since every answer that shows a document, and every
//! client that pulls it, parses it again.

use std::fmt;
use std::sync::Arc;

use serde::de::{Error as _, MapAccess, SeqAccess, Visitor};
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

    /// What a document's text is, without building it: whether it is a JSON object that strict
    /// parsers accept ([`DocumentError`] says what they would refuse), and its `@type` if it has
    /// a string one. Scans the text once; allocates only the parser's scratch buffer, for strings
    /// with escapes, and the `@type`.
    pub fn probe(&self) -> Probe {
        if !self.0.trim_start().starts_with('{') {
            return Probe::NotAnObject;
        }
        match serde_json::from_str::<TopLevel>(&self.0) {
            Ok(TopLevel(TypeField::Absent | TypeField::Null)) => Probe::Object { json_type: None },
            Ok(TopLevel(TypeField::Str(t))) => Probe::Object { json_type: Some(t) },
            // Not a string, or given twice.
            Ok(TopLevel(TypeField::Bad)) => Probe::BadType,
            Err(e) => Probe::Invalid(DocumentError::from_json(&e)),
        }
    }

    /// Checks that the text is one JSON value that strict parsers accept (any value; staging's
    /// [`Document::probe`] also wants an object). One scan, no tree built.
    pub fn validate(&self) -> Result<(), DocumentError> {
        serde_json::from_str::<Valid>(&self.0)
            .map(|Valid| ())
            .map_err(|e| DocumentError::from_json(&e))
    }

    /// The text as a [`RawValue`], for writing it into an answer as it is, once
    /// [`Document::validate`] passed: text stored before validation existed, or damaged, is
    /// refused rather than handed to clients.
    pub fn to_raw(&self) -> Result<&RawValue, DocumentError> {
        self.validate()?;
        serde_json::from_str(&self.0).map_err(|e| DocumentError::from_json(&e))
    }

    /// Wraps text read back from a segment or checkpoint. The text was validated when the change
    /// was accepted (or, if it was stored before that check existed, perhaps not); corrupt text
    /// surfaces as an error from [`Document::to_object`] and [`Document::to_raw`], never as a
    /// panic or as invalid JSON written out.
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
    /// Starts like an object, but is not JSON that strict parsers accept.
    Invalid(DocumentError),
}

/// Deepest nesting of arrays and objects a document may have, the outermost object counting as
/// one: serde_json's recursion limit, so whatever is accepted can also be parsed into a tree
/// (merge patches do).
pub const MAX_DEPTH: usize = 127;

/// Why a document's text is refused. Details name the place (line and column of the text), never
/// the content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// A `\u` escape of one half of a UTF-16 surrogate pair without the other half (what a
    /// JavaScript client sends when it cuts a string inside an emoji).
    #[error(
        "the document has a lone surrogate escape at line {line} column {column}: an escape in \\ud800-\\udbff must be followed by one in \\udc00-\\udfff, and neither half may stand alone"
    )]
    LoneSurrogate {
        /// Line of the text, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
    },
    /// A number beyond the range of a 64-bit float, such as `1e400`.
    #[error(
        "the document has a number out of range at line {line} column {column}: numbers must fit a 64-bit float (at most about 1.8e308 in size)"
    )]
    NumberOutOfRange {
        /// Line of the text, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
    },
    /// Arrays and objects nested deeper than [`MAX_DEPTH`].
    #[error(
        "the document is nested deeper than {MAX_DEPTH} levels of arrays and objects (at line {line} column {column})"
    )]
    TooDeep {
        /// Line of the text, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
    },
    /// Not JSON at all: serde_json's description of the syntax error.
    #[error("the document is not valid JSON: {0}")]
    Syntax(String),
}

impl DocumentError {
    /// Names what serde_json refused. serde_json keeps its error codes private, so this reads its
    /// messages (pinned by tests, so an upgrade that rewords them shows).
    fn from_json(e: &serde_json::Error) -> Self {
        let (line, column) = (e.line(), e.column());
        let message = e.to_string();
        if message.starts_with("lone leading surrogate")
            || message.starts_with("unexpected end of hex escape")
        {
            DocumentError::LoneSurrogate { line, column }
        } else if message.starts_with("number out of range") {
            DocumentError::NumberOutOfRange { line, column }
        } else if message.starts_with("recursion limit exceeded") {
            DocumentError::TooDeep { line, column }
        } else {
            DocumentError::Syntax(message)
        }
    }
}

/// Any JSON value, visited and dropped. serde_json's `deserialize_any` decodes every string
/// (refusing lone surrogate escapes), parses every number (refusing those beyond `f64`) and
/// counts nesting (refusing more than its limit); `IgnoredAny` would skip all three checks.
struct Valid;

impl<'de> Deserialize<'de> for Valid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValidVisitor)
    }
}

struct ValidVisitor;

impl<'de> Visitor<'de> for ValidVisitor {
    type Value = Valid;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_str<E>(self, _: &str) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Valid, A::Error> {
        while seq.next_element::<Valid>()?.is_some() {}
        Ok(Valid)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Valid, A::Error> {
        // Keys are strings; visiting them decodes them like values.
        while map.next_key::<Valid>()?.is_some() {
            map.next_value::<Valid>()?;
        }
        Ok(Valid)
    }
}

/// A document's top-level object, reduced to its `@type`; everything else is checked by
/// [`Valid`].
struct TopLevel(TypeField);

/// What the top level says about `@type`.
enum TypeField {
    Absent,
    /// `"@type": null`, read as absent (as an `Option` field always read it).
    Null,
    Str(String),
    /// Not a string or null, or given twice.
    Bad,
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TopVisitor;
        impl<'de> Visitor<'de> for TopVisitor {
            type Value = TopLevel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
                let mut field = TypeField::Absent;
                while let Some(IsType(is_type)) = map.next_key()? {
                    if !is_type {
                        map.next_value::<Valid>()?;
                    } else if matches!(field, TypeField::Absent) {
                        field = map.next_value()?;
                    } else {
                        map.next_value::<Valid>()?;
                        field = TypeField::Bad;
                    }
                }
                Ok(TopLevel(field))
            }
        }
        deserializer.deserialize_map(TopVisitor)
    }
}

/// A top-level key: `@type` or another.
struct IsType(bool);

impl<'de> Deserialize<'de> for IsType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = IsType;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, key: &str) -> Result<IsType, E> {
                Ok(IsType(key == "@type"))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for TypeField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TypeVisitor;
        impl<'de> Visitor<'de> for TypeVisitor {
            type Value = TypeField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<TypeField, E> {
                Ok(TypeField::Null)
            }
            fn visit_str<E>(self, t: &str) -> Result<TypeField, E> {
                Ok(TypeField::Str(t.to_owned()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<TypeField, E> {
                Ok(TypeField::Bad)
            }
            fn visit_i64<E>(self, _: i64) -> Result<TypeField, E> {
                Ok(TypeField::Bad)
            }
            fn visit_u64<E>(self, _: u64) -> Result<TypeField, E> {
                Ok(TypeField::Bad)
            }
            fn visit_f64<E>(self, _: f64) -> Result<TypeField, E> {
                Ok(TypeField::Bad)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<TypeField, A::Error> {
                ValidVisitor.visit_seq(seq).map(|Valid| TypeField::Bad)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TypeField, A::Error> {
                ValidVisitor.visit_map(map).map(|Valid| TypeField::Bad)
            }
        }
        deserializer.deserialize_any(TypeVisitor)
    }
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
    /// Writes the stored text as it is (checked, not copied or re-built); text that strict
    /// parsers would refuse is an error, never written.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_raw()
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
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

    fn at(line: usize, column: usize) -> (usize, usize) {
        (line, column)
    }

    #[test]
    fn probe_names_what_strict_parsers_refuse_and_where() {
        use DocumentError::*;
        let probe = |s: &str| Document::from_stored(s).probe();
        let invalid = |s: &str| match probe(s) {
            Probe::Invalid(e) => Some(e),
            _ => None,
        };
        let place = |e: Option<DocumentError>| match e {
            Some(LoneSurrogate { line, column }) => Some(("surrogate", at(line, column))),
            Some(NumberOutOfRange { line, column }) => Some(("number", at(line, column))),
            Some(TooDeep { line, column }) => Some(("depth", at(line, column))),
            _ => None,
        };
        assert_eq!(
            place(invalid(r#"{"a": "x\ud83d"}"#)),
            Some(("surrogate", at(1, 15)))
        );
        assert_eq!(
            place(invalid(r#"{"a": "\ude00"}"#)),
            Some(("surrogate", at(1, 13)))
        );
        assert_eq!(
            place(invalid("{\n \"\\ud83d\": 1}")),
            Some(("surrogate", at(2, 9)))
        );
        assert_eq!(
            place(invalid(r#"{"a": [1e400]}"#)),
            Some(("number", at(1, 12)))
        );
        assert_eq!(
            place(invalid(r#"{"a": -1e400}"#)),
            Some(("number", at(1, 12)))
        );
        // The outer object and 127 arrays: the last `[` (column 133) is level 128.
        let deep = format!(r#"{{"a": {}{}}}"#, "[".repeat(127), "]".repeat(127));
        assert_eq!(place(invalid(&deep)), Some(("depth", at(1, 133))));
        let ok_depth = format!(r#"{{"a": {}{}}}"#, "[".repeat(126), "]".repeat(126));
        assert_eq!(probe(&ok_depth), Probe::Object { json_type: None });
        // What is not JSON at all, with serde_json's words (never the content).
        for (text, says) in [
            (
                r#"{"a": "secret" "b"}"#,
                "expected `,` or `}` at line 1 column 16",
            ),
            (
                r#"{"a": 1} trailing"#,
                "trailing characters at line 1 column 10",
            ),
            (r#"{"a": "\q"}"#, "invalid escape"),
            ("{\"a\": \"tab\there\"}", "control character"),
            (r#"{"a": 01}"#, "invalid number"),
            (r#"{"a": NaN}"#, "expected value"),
            (r#"{"a": "#, "EOF while parsing"),
        ] {
            match invalid(text) {
                Some(Syntax(m)) => assert!(m.contains(says) && !m.contains("secret"), "{m}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn probe_reads_type_as_before() {
        let probe = |s: &str| Document::from_stored(s).probe();
        let typed = |t: &str| Probe::Object {
            json_type: Some(t.into()),
        };
        assert_eq!(
            probe(r#"{"x": {"@type": 1}, "@type": "Card"}"#),
            typed("Card")
        );
        assert_eq!(probe(r#"{"@type": "Ca\u0072d"}"#), typed("Card"));
        assert_eq!(
            probe(r#"{"@type": null}"#),
            Probe::Object { json_type: None }
        );
        for bad in [
            r#"{"@type": "Card", "@type": "Card"}"#,
            r#"{"@type": ["Card"]}"#,
            r#"{"@type": {"a": 1}}"#,
            r#"{"@type": true}"#,
            r#"{"@type": -1.5}"#,
        ] {
            assert_eq!(probe(bad), Probe::BadType, "{bad}");
        }
        // A bad @type does not hide an invalid document.
        assert!(matches!(
            probe(r#"{"@type": ["\ud83d"]}"#),
            Probe::Invalid(DocumentError::LoneSurrogate { .. })
        ));
        assert!(matches!(
            probe(r#"{"@type": 1, "@type": 1e999}"#),
            Probe::Invalid(DocumentError::NumberOutOfRange { .. })
        ));
    }

    /// Why the check visits every value: serde_json's cheap skips — `IgnoredAny`, and the
    /// `RawValue` the push route keeps documents as — accept all three kinds of text.
    #[test]
    fn skipping_values_checks_none_of_it_so_validate_visits_them() {
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        for text in [
            r#"["\ud83d"]"#,
            r#"{"\udc00": 1}"#,
            "[1e400]",
            "-1e400",
            deep.as_str(),
        ] {
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok(),
                "{text}"
            );
            assert!(serde_json::from_str::<&RawValue>(text).is_ok(), "{text}");
            let doc = Document::from_stored(text);
            assert!(doc.validate().is_err(), "{text}");
            assert!(doc.to_raw().is_err(), "{text}");
            assert!(
                serde_json::to_string(&doc).is_err(),
                "{text}: never written out"
            );
        }
        for text in [
            "null",
            "[]",
            r#""\ud83d\ude00""#,
            "[1.5e308, -0, 1e-400]",
            "{}",
        ] {
            let doc = Document::from_stored(text);
            assert_eq!(doc.validate(), Ok(()), "{text}");
            assert_eq!(serde_json::to_string(&doc).ok().as_deref(), Some(text));
        }
    }
}
