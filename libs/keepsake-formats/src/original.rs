//! The original text of an imported entry, kept inside the item's document.
//!
//! An imported document carries one vendor property (RFC 9553 / RFC 8984 allow vendor-named
//! properties, `domain:name`):
//!
//! ```json
//! "keepsake.app:original": {
//!   "mediaType": "text/vcard",
//!   "text": "BEGIN:VCARD\r\n...END:VCARD\r\n",
//!   "digest": "sha256:<hex>"
//! }
//! ```
//!
//! `digest` is the SHA-256 of the document *without* this property (nor
//! [`RESOURCE_PROPERTY`], a DAV resource's name, which is not data), in canonical JSON
//! ([`canonical_json`]: object keys sorted by their UTF-8 bytes, no
//! whitespace, serde_json's escapes and numbers). Invariant: export gives back `text`
//! unchanged exactly while the document minus this property still has that digest, whatever
//! the order of its keys; any change a device makes to the rest of the document (a put with
//! other content, a merge patch) makes the digest differ, and export converts the document
//! instead. A device that removes the property, or changes it, only loses the original text.
//!
//! Why inside the document: the document is what the log stores, versions, restores and
//! serves; kept there, the original text is in history and as-of reads with no other store,
//! and a restore brings it back with the version it belongs to.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::Format;
use keepsake_model::COLLECTION_PROPERTY;

/// The vendor property holding the original text.
pub const ORIGINAL_PROPERTY: &str = "keepsake.app:original";

/// The vendor property holding the name a CardDAV/CalDAV client gave the item's resource
/// (`{"name": "<name>"}`), when it is not `<item id>.vcf` / `.ics`: listings give the client
/// back the name it chose. It is not part of the item's data: the digest leaves it out (so
/// keeping a name never makes the original text stale) and export never writes it.
pub const RESOURCE_PROPERTY: &str = "keepsake.app:resource";

/// The vendor property of an `event`/`task`/`note` holding what its VCALENDAR carried beside
/// the item (calendar properties such as `PRODID` and `X-WR-CALNAME`, and its VTIMEZONEs), as
/// calcard converts them: the JSCalendar Group around the item, without `entries`.
pub const CALENDAR_PROPERTY: &str = "keepsake.app:calendar";

/// The digest recorded for a document: `sha256:` and the hex SHA-256 of its canonical JSON
/// without [`ORIGINAL_PROPERTY`], [`RESOURCE_PROPERTY`] and the collection the item is kept in
/// ([`COLLECTION_PROPERTY`]: moving an item is not a change of its data).
pub fn document_digest(document: &Map<String, Value>) -> String {
    let mut text = String::new();
    write_object(
        &mut text,
        document,
        &[ORIGINAL_PROPERTY, RESOURCE_PROPERTY, COLLECTION_PROPERTY],
    );
    let hash = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in hash.iter() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Canonical JSON of a value: object keys sorted, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => write_object(out, map, &[]),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::String(s) => write_string(out, s),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>, skip: &[&str]) {
    let mut keys: Vec<&String> = map.keys().filter(|k| !skip.contains(&k.as_str())).collect();
    keys.sort();
    out.push('{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        if let Some(v) = map.get(key) {
            write_value(out, v);
        }
    }
    out.push('}');
}

fn write_string(out: &mut String, s: &str) {
    // Serializing a string cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Records `text` as the original of `document` (computing the digest of the document as it
/// is now, so call this last).
pub fn attach(document: &mut Map<String, Value>, format: Format, text: &str) {
    let digest = document_digest(document);
    let mut original = Map::new();
    original.insert("mediaType".into(), Value::from(format.media_type()));
    original.insert("text".into(), Value::from(text));
    original.insert("digest".into(), Value::from(digest));
    document.insert(ORIGINAL_PROPERTY.into(), Value::Object(original));
}

/// The original text to export for `document` in `format`: present, of that format, and the
/// document unchanged since it was recorded. `None` means: convert the document.
pub fn unchanged_original(document: &Map<String, Value>, format: Format) -> Option<&str> {
    let original = document.get(ORIGINAL_PROPERTY)?.as_object()?;
    let media_type = original.get("mediaType")?.as_str()?;
    if Format::from_media_type(media_type) != Some(format) {
        return None;
    }
    let text = original.get("text")?.as_str()?;
    let digest = original.get("digest")?.as_str()?;
    (digest == document_digest(document)).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn digest_ignores_key_order_and_the_original_property() {
        let a = object(json!({"b": 1, "a": {"y": [1, "x"], "x": null}}));
        let b = object(json!({"a": {"x": null, "y": [1, "x"]}, "b": 1, ORIGINAL_PROPERTY: 5}));
        assert_eq!(document_digest(&a), document_digest(&b));
        assert!(document_digest(&a).starts_with("sha256:"));
        assert_eq!(document_digest(&a).len(), 7 + 64);
        let c = object(json!({"b": 2, "a": {"y": [1, "x"], "x": null}}));
        assert_ne!(document_digest(&a), document_digest(&c));
    }

    #[test]
    fn canonical_json_is_sorted_and_compact() {
        let v = json!({"z": "é\n", "a": [true, 1.5, null]});
        assert_eq!(canonical_json(&v), r#"{"a":[true,1.5,null],"z":"é\n"}"#);
    }

    #[test]
    fn the_original_is_given_back_only_while_unchanged_and_only_in_its_format() {
        let mut doc = object(json!({"@type": "Card", "uid": "u1"}));
        attach(&mut doc, Format::VCard, "BEGIN:VCARD\r\nEND:VCARD\r\n");
        assert_eq!(
            unchanged_original(&doc, Format::VCard),
            Some("BEGIN:VCARD\r\nEND:VCARD\r\n")
        );
        assert_eq!(unchanged_original(&doc, Format::ICalendar), None);
        doc.insert("uid".into(), json!("u2"));
        assert_eq!(unchanged_original(&doc, Format::VCard), None);
        doc.insert("uid".into(), json!("u1"));
        assert!(unchanged_original(&doc, Format::VCard).is_some());
        if let Some(Value::Object(o)) = doc.get_mut(ORIGINAL_PROPERTY) {
            o.insert("digest".into(), json!("sha256:00"));
        }
        assert_eq!(unchanged_original(&doc, Format::VCard), None);
    }
}
