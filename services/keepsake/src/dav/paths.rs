//! Where things are in the DAV tree, and which item a resource name is.
//!
//! ```text
//! /.well-known/carddav, /.well-known/caldav      -> 301 /dav/ (RFC 6764)
//! /dav/                                           the root: current-user-principal
//! /dav/users/<user>/                              the user's principal, and the home of both
//!                                                 (addressbook-home-set, calendar-home-set)
//! /dav/users/<user>/contacts/                     the address book: kind contact
//! /dav/users/<user>/calendar/                     the calendar: kinds event, task, note
//! /dav/users/<user>/contacts/<name>.vcf           one contact
//! /dav/users/<user>/calendar/<name>.ics           one event, task or note
//! ```
//!
//! A resource's item: `<item id>.vcf` / `<item id>.ics` is that item (every item written over
//! REST is served under such a name); any other name is the item
//! `UUIDv5(user, "keepsake-dav/v1/item/<collection>/<name>")`, and the name is kept in the
//! document ([`keepsake_formats::RESOURCE_PROPERTY`]) so that listings give the client back the
//! name it chose. Invariant: [`item_of`] and [`Collection::href_of`] agree, so the href a
//! listing gives is the href that reads the item.

use keepsake_model::{ItemId, Kind, UserId};
use uuid::Uuid;

/// The root every DAV path starts with.
pub const ROOT: &str = "/dav/";

/// A user's principal and home.
pub fn home(user: UserId) -> String {
    format!("{ROOT}users/{user}/")
}

/// The two collections of every user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collection {
    /// The address book (`contacts/`): kind contact.
    Contacts,
    /// The calendar (`calendar/`): kinds event, task and note.
    Calendar,
}

impl Collection {
    /// Both, in the order listings give them.
    pub const ALL: [Collection; 2] = [Collection::Contacts, Collection::Calendar];

    /// The collection of a path segment.
    pub fn parse(segment: &str) -> Option<Self> {
        match segment {
            "contacts" => Some(Collection::Contacts),
            "calendar" => Some(Collection::Calendar),
            _ => None,
        }
    }

    /// Its path segment.
    pub fn segment(self) -> &'static str {
        match self {
            Collection::Contacts => "contacts",
            Collection::Calendar => "calendar",
        }
    }

    /// Its href.
    pub fn href(self, user: UserId) -> String {
        format!("{}{}/", home(user), self.segment())
    }

    /// Whether it holds items of `kind`.
    pub fn holds(self, kind: Kind) -> bool {
        match self {
            Collection::Contacts => kind == Kind::Contact,
            Collection::Calendar => matches!(kind, Kind::Event | Kind::Task | Kind::Note),
        }
    }

    /// The text format of its items.
    pub fn format(self) -> keepsake_formats::Format {
        match self {
            Collection::Contacts => keepsake_formats::Format::VCard,
            Collection::Calendar => keepsake_formats::Format::ICalendar,
        }
    }

    /// The extension of its items' names.
    pub fn extension(self) -> &'static str {
        match self {
            Collection::Contacts => "vcf",
            Collection::Calendar => "ics",
        }
    }

    /// The href of an item: its kept resource name if it has one, else `<item id>.<ext>`.
    pub fn href_of(self, user: UserId, item: ItemId, name: Option<&str>) -> String {
        format!(
            "{}{}",
            self.href(user),
            encode(&listed_name(user, self, item, name))
        )
    }
}

/// The item a resource name in `collection` is (see the module docs).
pub fn item_of(user: UserId, collection: Collection, name: &str) -> ItemId {
    let stem = name
        .strip_suffix(&format!(".{}", collection.extension()))
        .unwrap_or(name);
    if let Ok(id) = stem.parse::<Uuid>()
        && stem.len() == 36
        && stem == id.hyphenated().to_string()
    {
        return ItemId(id);
    }
    let named = format!("keepsake-dav/v1/item/{}/{name}", collection.segment());
    ItemId(Uuid::new_v5(&user.0, named.as_bytes()))
}

/// True when `name` is not the item's plain `<item id>.<ext>` and so must be kept.
pub fn is_chosen_name(collection: Collection, item: ItemId, name: &str) -> bool {
    name != format!("{item}.{}", collection.extension())
}

/// Percent-encodes a resource name for an href: everything but RFC 3986 unreserved
/// characters and `@`.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded path segment; `None` if it is not valid UTF-8 once decoded or
/// names a parent or a path.
pub fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    (!name.is_empty() && name != "." && name != ".." && !name.contains('/')).then_some(name)
}

/// A resource name as the router gives it (already percent-decoded): `None` when it is empty,
/// `.` or `..`, or holds a `/`.
pub fn valid_name(name: &str) -> Option<String> {
    (!name.is_empty() && name != "." && name != ".." && !name.contains('/'))
        .then(|| name.to_string())
}

/// The name an item is listed under: its kept name when that name is the item's, else
/// `<item id>.<ext>` ([`Collection::href_of`] without the collection).
pub fn listed_name(user: UserId, c: Collection, item: ItemId, name: Option<&str>) -> String {
    match name {
        Some(name) if item_of(user, c, name) == item => name.to_string(),
        _ => format!("{item}.{}", c.extension()),
    }
}

/// What an href (from a multiget, or a request path) points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The root.
    Root,
    /// A user's principal and home.
    Home(UserId),
    /// A collection.
    Collection(UserId, Collection),
    /// An item resource, with its decoded name.
    Item(UserId, Collection, String),
}

/// Parses an href or a path: absolute URLs are cut to their path first.
pub fn parse_href(href: &str) -> Option<Target> {
    let path = match href.find("://") {
        Some(scheme) => {
            let rest = &href[scheme + 3..];
            &rest[rest.find('/')?..]
        }
        None => href,
    };
    let path = path.split(['?', '#']).next()?;
    let rest = path.strip_prefix("/dav")?;
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match parts.as_slice() {
        [] => Some(Target::Root),
        ["users", user] => Some(Target::Home(user.parse().ok()?)),
        ["users", user, collection] => Some(Target::Collection(
            user.parse().ok()?,
            Collection::parse(collection)?,
        )),
        ["users", user, collection, name] => Some(Target::Item(
            user.parse().ok()?,
            Collection::parse(collection)?,
            decode(name)?,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserId {
        UserId(Uuid::from_u128(7))
    }

    #[test]
    fn an_item_id_name_is_that_item_and_others_are_derived() {
        let id = ItemId(Uuid::from_u128(42));
        let c = Collection::Calendar;
        assert_eq!(item_of(user(), c, &format!("{id}.ics")), id);
        let chosen = item_of(user(), c, "meeting@example.com.ics");
        assert_ne!(chosen, id);
        assert_eq!(chosen, item_of(user(), c, "meeting@example.com.ics"));
        // Another user, another collection: another item.
        assert_ne!(
            chosen,
            item_of(UserId(Uuid::from_u128(8)), c, "meeting@example.com.ics")
        );
        assert_ne!(
            chosen,
            item_of(user(), Collection::Contacts, "meeting@example.com.ics")
        );
        // An upper-case UUID is a chosen name (the listing must give it back as written).
        let upper = format!("{}.ics", id.0.hyphenated().to_string().to_uppercase());
        assert_ne!(item_of(user(), c, &upper), id);
    }

    #[test]
    fn hrefs_read_back_as_the_items_they_name() {
        let c = Collection::Contacts;
        for name in ["a b%c.vcf", "x@y.vcf", "ünï.vcf", "plain"] {
            let item = item_of(user(), c, name);
            let href = c.href_of(user(), item, Some(name));
            assert_eq!(
                parse_href(&href),
                Some(Target::Item(user(), c, name.to_string())),
                "{href}"
            );
        }
        // A kept name that is not the item's is ignored: the href is the item id's.
        let item = ItemId(Uuid::from_u128(1));
        let href = c.href_of(user(), item, Some("other.vcf"));
        assert_eq!(
            parse_href(&href),
            Some(Target::Item(user(), c, format!("{item}.vcf")))
        );
    }

    #[test]
    fn paths_parse() {
        let u = user();
        assert_eq!(parse_href("/dav/"), Some(Target::Root));
        assert_eq!(parse_href("/dav"), Some(Target::Root));
        assert_eq!(parse_href(&home(u)), Some(Target::Home(u)));
        assert_eq!(
            parse_href(&format!("http://127.0.0.1:1/dav/users/{u}/calendar/")),
            Some(Target::Collection(u, Collection::Calendar))
        );
        assert_eq!(parse_href(&format!("/dav/users/{u}/notes/")), None);
        assert_eq!(parse_href(&format!("/dav/users/{u}/calendar/%2e%2e")), None);
        assert_eq!(parse_href(&format!("/dav/users/{u}/calendar/a%2Fb")), None);
        assert_eq!(parse_href("/other/"), None);
    }

    proptest::proptest! {
        /// Any name a client may give reads back, through its href, as the same name and item;
        /// no href, however odd, panics the parser.
        #[test]
        fn any_name_round_trips_and_no_href_panics(
            name in "[^/]{1,40}", href in ".{0,80}", chosen in proptest::bool::ANY,
        ) {
            let c = if chosen { Collection::Calendar } else { Collection::Contacts };
            let _ = parse_href(&href);
            let _ = decode(&href);
            if let Some(name) = valid_name(&name) {
                let item = item_of(user(), c, &name);
                let href = c.href_of(user(), item, Some(&name));
                proptest::prop_assert_eq!(parse_href(&href), Some(Target::Item(user(), c, name.clone())));
                proptest::prop_assert_eq!(item_of(user(), c, &name), item);
            }
        }
    }
}
