//! WebDAV XML: request bodies read into a small tree (quick-xml does the parsing and the
//! namespaces), and multistatus answers written as text with quick-xml's escaping.
//!
//! Invariants: a body that is not well-formed XML, or that is deeper or larger than the limits,
//! is an error (answered 400), never a panic; every text and attribute written is escaped.

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

/// `DAV:`
pub const DAV: &str = "DAV:";
/// CardDAV, RFC 6352.
pub const CARDDAV: &str = "urn:ietf:params:xml:ns:carddav";
/// CalDAV, RFC 4791.
pub const CALDAV: &str = "urn:ietf:params:xml:ns:caldav";
/// Keepsake's own preconditions (`mass-delete-confirmation`).
pub const KEEPSAKE_NS: &str = "https://keepsake.app/ns/dav";
/// Apple's calendarserver extensions (`getctag`).
pub const CALSERVER: &str = "http://calendarserver.org/ns/";
/// Apple's iCal namespace: `calendar-color`, `calendar-order`.
pub const APPLE_ICAL: &str = "http://apple.com/ns/ical/";

/// Deepest element nesting read (a calendar-query filter is about 6 deep).
const MAX_DEPTH: usize = 32;
/// Most elements read from one body.
const MAX_ELEMENTS: usize = 100_000;

/// One element: its namespace and local name, its children, and its text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    /// The namespace URI (empty when unbound).
    pub ns: String,
    /// The local name.
    pub name: String,
    /// Attributes by local name (namespaces of attributes are not needed here).
    pub attrs: Vec<(String, String)>,
    /// Child elements in order.
    pub children: Vec<Element>,
    /// The text directly inside it, entities resolved.
    pub text: String,
}

impl Element {
    /// Whether it is `{ns}name`.
    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    /// The first child `{ns}name`.
    pub fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(ns, name))
    }

    /// Every child `{ns}name`.
    pub fn children_named<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.is(ns, name))
    }

    /// An attribute's value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// Not well-formed, or not UTF-8.
    #[error("the body is not well-formed XML: {0}")]
    Malformed(String),
    /// Nested deeper or holding more elements than the limits.
    #[error(
        "the body is nested deeper than {MAX_DEPTH} or holds more than {MAX_ELEMENTS} elements"
    )]
    TooLarge,
    /// No root element.
    #[error("the body has no root element")]
    Empty,
}

fn malformed(e: impl std::fmt::Display) -> XmlError {
    XmlError::Malformed(e.to_string())
}

/// Reads a body into its root element.
pub fn parse(text: &str) -> Result<Element, XmlError> {
    let mut reader = NsReader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Element> = Vec::new();
    let mut count = 0usize;
    loop {
        let (resolved, event) = reader.read_resolved_event().map_err(malformed)?;
        let ns = match resolved {
            ResolveResult::Bound(ns) => String::from_utf8_lossy(ns.as_ref()).into_owned(),
            _ => String::new(),
        };
        match event {
            Event::Start(start) => {
                count += 1;
                if stack.len() >= MAX_DEPTH || count > MAX_ELEMENTS {
                    return Err(XmlError::TooLarge);
                }
                stack.push(element(ns, &start)?);
            }
            Event::Empty(start) => {
                count += 1;
                if stack.len() >= MAX_DEPTH || count > MAX_ELEMENTS {
                    return Err(XmlError::TooLarge);
                }
                let done = element(ns, &start)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Ok(done),
                }
            }
            Event::End(_) => {
                let Some(done) = stack.pop() else {
                    return Err(XmlError::Malformed("an end tag without a start".into()));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Ok(done),
                }
            }
            Event::Text(text) => {
                if let Some(current) = stack.last_mut() {
                    current
                        .text
                        .push_str(&text.xml10_content().map_err(malformed)?);
                }
            }
            Event::CData(data) => {
                if let Some(current) = stack.last_mut() {
                    current.text.push_str(&data.decode().map_err(malformed)?);
                }
            }
            Event::GeneralRef(reference) => {
                let Some(current) = stack.last_mut() else {
                    continue;
                };
                if let Some(ch) = reference.resolve_char_ref().map_err(malformed)? {
                    current.text.push(ch);
                } else {
                    let name = reference.decode().map_err(malformed)?;
                    let resolved = quick_xml::escape::resolve_predefined_entity(&name)
                        .ok_or_else(|| XmlError::Malformed(format!("unknown entity &{name};")))?;
                    current.text.push_str(resolved);
                }
            }
            Event::Eof => {
                return Err(if stack.is_empty() {
                    XmlError::Empty
                } else {
                    XmlError::Malformed("the body ends inside an element".into())
                });
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
}

fn element(ns: String, start: &quick_xml::events::BytesStart<'_>) -> Result<Element, XmlError> {
    let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(malformed)?;
        let key = String::from_utf8_lossy(attr.key.local_name().as_ref()).into_owned();
        let value = attr
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(malformed)?
            .into_owned();
        attrs.push((key, value));
    }
    Ok(Element {
        ns,
        name,
        attrs,
        ..Element::default()
    })
}

/// Escapes text for an element's content or an attribute value.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(text)
}

/// The prefix a multistatus answer binds to a namespace.
pub fn prefix(ns: &str) -> Option<&'static str> {
    match ns {
        DAV => Some("d"),
        CARDDAV => Some("card"),
        CALDAV => Some("cal"),
        CALSERVER => Some("cs"),
        KEEPSAKE_NS => Some("ks"),
        APPLE_ICAL => Some("ical"),
        _ => None,
    }
}

/// A property's qualified name as written: `d:getetag`, or an element with its own `xmlns`
/// for a namespace the answer does not bind.
pub fn open_tag(ns: &str, name: &str, empty: bool) -> String {
    let end = if empty { "/>" } else { ">" };
    match prefix(ns) {
        Some(p) => format!("<{p}:{name}{end}"),
        None if ns.is_empty() => format!("<{name}{end}"),
        None => format!("<x:{name} xmlns:x=\"{}\"{end}", escape(ns)),
    }
}

/// The closing tag matching [`open_tag`].
pub fn close_tag(ns: &str, name: &str) -> String {
    match prefix(ns) {
        Some(p) => format!("</{p}:{name}>"),
        None if ns.is_empty() => format!("</{name}>"),
        None => format!("</x:{name}>"),
    }
}

/// The start of a multistatus document, binding every namespace the answers use.
pub const MULTISTATUS_OPEN: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<d:multistatus xmlns:d=\"DAV:\" xmlns:card=\"urn:ietf:params:xml:ns:carddav\" xmlns:cal=\"urn:ietf:params:xml:ns:caldav\" xmlns:cs=\"http://calendarserver.org/ns/\" xmlns:ical=\"http://apple.com/ns/ical/\">";
/// Its end.
pub const MULTISTATUS_CLOSE: &str = "</d:multistatus>\n";

/// A `DAV:error` body naming one precondition (`d:valid-sync-token`, `cal:valid-calendar-data`).
pub fn error_body(ns: &str, name: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<d:error xmlns:d=\"DAV:\" xmlns:card=\"urn:ietf:params:xml:ns:carddav\" xmlns:cal=\"urn:ietf:params:xml:ns:caldav\" xmlns:ks=\"https://keepsake.app/ns/dav\">{}</d:error>\n",
        open_tag(ns, name, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_entities_and_nesting_are_read() {
        let body = r#"<?xml version="1.0"?>
            <A:propfind xmlns:A="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
              <A:prop><A:getetag/><C:calendar-data/><B:x xmlns:B="urn:other"/></A:prop>
              <A:href>/dav/a&amp;b&#x20;c</A:href>
            </A:propfind>"#;
        let root = parse(body).expect("parses");
        assert!(root.is(DAV, "propfind"));
        let prop = root.child(DAV, "prop").expect("prop");
        let names: Vec<_> = prop
            .children
            .iter()
            .map(|c| (c.ns.as_str(), c.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (DAV, "getetag"),
                (CALDAV, "calendar-data"),
                ("urn:other", "x")
            ]
        );
        assert_eq!(
            root.child(DAV, "href").map(|h| h.text.as_str()),
            Some("/dav/a&b c")
        );
    }

    #[test]
    fn bad_bodies_are_errors() {
        assert!(matches!(parse(""), Err(XmlError::Empty)));
        assert!(matches!(parse("<a><b></a>"), Err(XmlError::Malformed(_))));
        assert!(matches!(parse("<a>"), Err(XmlError::Malformed(_))));
        assert!(matches!(
            parse("<a>&nope;</a>"),
            Err(XmlError::Malformed(_))
        ));
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert!(matches!(parse(&deep), Err(XmlError::TooLarge)));
    }

    #[test]
    fn tags_and_escapes() {
        assert_eq!(open_tag(DAV, "getetag", true), "<d:getetag/>");
        assert_eq!(
            open_tag("urn:x\"y", "p", true),
            "<x:p xmlns:x=\"urn:x&quot;y\"/>"
        );
        assert_eq!(close_tag(CALDAV, "calendar-data"), "</cal:calendar-data>");
        assert_eq!(escape("<a&b>"), "&lt;a&amp;b&gt;");
    }

    proptest::proptest! {
        /// No body, however malformed, panics the reader.
        #[test]
        fn no_body_panics_the_reader(body in ".{0,200}", tags in proptest::collection::vec("</?[a-z:]{1,6}( [a-z:]{1,5}=\"[^\"]{0,5}\")?/?>|&[a-z#0-9]{0,5};?|[a-z ]{0,5}", 0..30)) {
            let _ = parse(&body);
            let _ = parse(&tags.concat());
        }
    }
}
