//! The body of a vCard or iCalendar export, streamed with bounded memory.
//!
//! An export answers with `x-keepsake-skipped` (items whose document cannot be written), a
//! header, so the count must be known before the first byte of the body. The first pass converts
//! every item, counting the skipped ones, and keeps the text only up to [`BUFFER_BYTES`]; an
//! export that fits (most address books) is sent from that buffer. A larger one sends the buffer,
//! then converts the items past it again, [`CHUNK_ITEMS`] at a time on a blocking thread, and
//! streams each chunk as it is ready: memory holds the buffer and one chunk, not the whole
//! text. Conversion is deterministic, so the second pass skips exactly the items the first
//! counted, and the body is byte for byte what one pass would give (tested).

use axum::body::{Body, Bytes};
use keepsake_formats::Format;
use keepsake_model::{Document, Kind};
use tokio::sync::mpsc;

use super::negotiate::item_text;

/// Text kept from the first pass before the rest is streamed.
pub(super) const BUFFER_BYTES: usize = 8 << 20;
/// Items converted per streamed chunk.
const CHUNK_ITEMS: usize = 256;

/// What the first pass found.
#[derive(Debug)]
pub(super) struct FirstPass {
    /// The text of the items up to `rest_from`.
    pub head: String,
    /// Items whose document cannot be written.
    pub skipped: u64,
    /// The items, and where the text not kept in `head` starts (`None`: all of it is there).
    items: Vec<(Kind, Document)>,
    rest_from: Option<usize>,
}

/// Converts every item, counting those that cannot be written, keeping at most `budget` bytes
/// of text. CPU work: call it on a blocking thread.
pub(super) fn first_pass(items: Vec<(Kind, Document)>, format: Format, budget: usize) -> FirstPass {
    let mut head = String::new();
    let mut skipped = 0u64;
    let mut rest_from = None;
    for (i, (kind, document)) in items.iter().enumerate() {
        match item_text(*kind, document, format) {
            Some(text) if rest_from.is_none() && head.len() + text.len() <= budget => {
                head.push_str(&text);
            }
            Some(_) => {
                rest_from.get_or_insert(i);
            }
            None => skipped += 1,
        }
    }
    FirstPass {
        head,
        skipped,
        items,
        rest_from,
    }
}

impl FirstPass {
    /// The response body: the kept text, then (if the export did not fit) the rest, converted
    /// again chunk by chunk while the client reads. A client that goes away stops the
    /// conversion at the next chunk.
    pub(super) fn into_body(self, format: Format) -> Body {
        let Some(from) = self.rest_from else {
            return Body::from(self.head);
        };
        let (tx, rx) = mpsc::channel::<Bytes>(2);
        let head = Bytes::from(self.head);
        let items = self.items;
        tokio::task::spawn_blocking(move || {
            for chunk in items.get(from..).unwrap_or_default().chunks(CHUNK_ITEMS) {
                let text: String = chunk
                    .iter()
                    .filter_map(|(kind, document)| item_text(*kind, document, format))
                    .collect();
                if tx.blocking_send(Bytes::from(text)).is_err() {
                    break;
                }
            }
        });
        let rest =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        let all = futures::StreamExt::chain(futures::stream::once(async move { head }), rest);
        Body::from_stream(futures::StreamExt::map(
            all,
            Ok::<_, std::convert::Infallible>,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cards(n: usize) -> Vec<(Kind, Document)> {
        (0..n)
            .map(|i| {
                let doc = if i % 7 == 3 {
                    // Cannot be written: skipped by both passes.
                    Document::from_stored("[1,2]")
                } else {
                    let json = format!(
                        r#"{{"@type":"Card","uid":"urn:uuid:{i:08}","name":{{"full":"Person {i}"}}}}"#
                    );
                    Document::from_stored(json.as_str())
                };
                (Kind::Contact, doc)
            })
            .collect()
    }

    async fn text(body: Body) -> String {
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        String::from_utf8(bytes.to_vec()).unwrap_or_default()
    }

    /// Whatever the buffer, the body is what converting every item once gives, and the skipped
    /// count is the same.
    #[tokio::test]
    async fn a_streamed_export_is_the_same_bytes_as_one_pass() {
        let items = cards(1000);
        let whole = first_pass(items.clone(), Format::VCard, usize::MAX);
        assert_eq!(whole.rest_from, None);
        assert_eq!(whole.skipped, 143);
        let want = whole.head.clone();
        assert_eq!(want.matches("BEGIN:VCARD").count(), 857);
        for budget in [0, 1, 300, 10_000, want.len() - 1, want.len()] {
            let pass = first_pass(items.clone(), Format::VCard, budget);
            assert!(pass.head.len() <= budget, "budget {budget}");
            assert_eq!(pass.skipped, 143, "budget {budget}");
            assert_eq!(
                pass.rest_from.is_none(),
                budget >= want.len(),
                "budget {budget}"
            );
            assert_eq!(
                text(pass.into_body(Format::VCard)).await,
                want,
                "budget {budget}"
            );
        }
    }
}
