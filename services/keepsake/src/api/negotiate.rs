//! What an item is as vCard or iCalendar text, and which of those a request asks for: the text
//! of one item (what exports and item reads send), its media type, and the `Accept`
//! negotiation of `GET /v1/items/{id}` (`docs/FORMATS.md`).

use axum::http::{HeaderMap, StatusCode, header};
use keepsake_formats::Format;
use keepsake_model::{Document, ItemState, Kind};
use serde_json::Value;

use super::ApiError;

/// One item's text, ending with a line end.
pub(crate) fn item_text(kind: Kind, document: &Document, format: Format) -> Option<String> {
    let object = document.to_object().ok()?;
    let mut text = keepsake_formats::export(kind, &Value::Object(object), format).ok()?;
    if !text.ends_with('\n') {
        text.push_str("\r\n");
    }
    Some(text)
}

pub(super) fn media_type_utf8(format: Format) -> &'static str {
    match format {
        Format::VCard => "text/vcard; charset=utf-8",
        Format::ICalendar => "text/calendar; charset=utf-8",
    }
}

/// The text format an `Accept` header asks for, if it names one: the first of `text/vcard`
/// and `text/calendar` it lists (parameters and quality ignored), and whether it also takes
/// JSON (`application/json`, `application/*` or `*/*`).
fn accepted(headers: &HeaderMap) -> (Option<Format>, bool) {
    let mut format = None;
    let mut json = false;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            match keepsake_formats::media_type_essence(range).as_str() {
                "application/json" | "application/*" | "*/*" => json = true,
                other => {
                    if format.is_none() {
                        format = Format::from_media_type(other);
                    }
                }
            }
        }
    }
    (format, json)
}

/// `GET /v1/items/{id}` with `Accept: text/vcard` or `text/calendar`: the item's text, or 406
/// `not_acceptable` when its kind has no such format (or its document cannot be written) and
/// the client takes no JSON. `None`: answer JSON as usual.
pub(super) fn negotiated(
    item: &ItemState,
    headers: &HeaderMap,
) -> Option<Result<(&'static str, String), ApiError>> {
    let (format, takes_json) = accepted(headers);
    let format = format?;
    if Format::of_kind(item.kind) != Some(format) {
        if takes_json {
            return None;
        }
        return Some(Err(not_acceptable(format!(
            "a {} item has no {} form; ask for {} or application/json",
            item.kind,
            format.media_type(),
            Format::of_kind(item.kind).map_or("application/json", |f| f.media_type()),
        ))));
    }
    let text = item
        .document
        .as_ref()
        .and_then(|d| item_text(item.kind, d, format));
    match text {
        Some(text) => Some(Ok((media_type_utf8(format), text))),
        None if takes_json => None,
        None => Some(Err(not_acceptable(format!(
            "the item's document cannot be written as {}; ask for application/json",
            format.media_type()
        )))),
    }
}

fn not_acceptable(detail: String) -> ApiError {
    ApiError::new(StatusCode::NOT_ACCEPTABLE, "not_acceptable", detail)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    /// A stored document that is not a JSON object calcard can read (damaged, or stored before
    /// validation) has no text: an export skips it and an item read answers 406, never a 500.
    /// (calcard writes something for every JSON object staging accepts.)
    #[test]
    fn a_document_that_cannot_be_written_has_no_text() {
        for text in ["not json", "[1,2]", r#"{"@type":"Card","#] {
            let doc = Document::from_stored(text);
            assert_eq!(
                item_text(Kind::Contact, &doc, Format::VCard),
                None,
                "{text}"
            );
        }
        let card = Document::from_stored(r#"{"@type":"Card","name":{"full":"Ada"}}"#);
        let text = item_text(Kind::Contact, &card, Format::VCard).unwrap_or_default();
        assert!(
            text.starts_with("BEGIN:VCARD\r\n") && text.ends_with("\r\n"),
            "{text}"
        );
        assert_eq!(item_text(Kind::Contact, &card, Format::ICalendar), None);
    }

    /// `Accept` picks the first text format it lists, and says whether JSON would do.
    #[test]
    fn accept_names_a_format_and_whether_json_will_do() {
        let cases = [
            ("text/vcard", (Some(Format::VCard), false)),
            (
                "text/calendar; charset=utf-8",
                (Some(Format::ICalendar), false),
            ),
            (
                "text/calendar, application/json;q=0.5",
                (Some(Format::ICalendar), true),
            ),
            ("application/json", (None, true)),
            ("*/*", (None, true)),
            ("text/html", (None, false)),
        ];
        for (accept, want) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
            assert_eq!(accepted(&headers), want, "{accept}");
        }
    }
}
