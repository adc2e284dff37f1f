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
//! name it chose. A `<uuid>.<ext>` name whose item is kept in another collection is the
//! derived item instead ([`derived_item`]: a client copying or moving an item between its
//! calendars under the same name makes a new item, never takes the other). Invariant: the
//! item a name resolves to (`collections::item_at`) and [`Collection::href_of`] agree, so
//! the href a listing gives is the href that reads the item.

use keepsake_model::{Holds, ItemId, Kind, UserId};
use uuid::Uuid;

/// The root every DAV path starts with.
pub const ROOT: &str = "/dav/";

/// A user's principal and home.
pub fn home(user: UserId) -> String {
    format!("{ROOT}users/{user}/")
}

/// One collection of a user: the default address book or calendar (`contacts/`,
/// `calendar/`), or one the user made (`MKCOL`, `MKCALENDAR`, or a REST put of a
/// `collection` item), at `<its name>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collection {
    /// What it holds.
    pub holds: Holds,
    /// Its item's id (a default's is [`Holds::default_id`], written or not).
    pub id: ItemId,
    /// Its path segment, decoded.
    pub segment: String,
    /// Whether it is the user's default of its sort.
    pub default: bool,
    /// Its item's document (what it is called, its colour): `None` for a default never
    /// written.
    pub document: Option<keepsake_model::Document>,
}

impl Collection {
    /// The user's default collection of a sort.
    pub fn default_of(user: UserId, holds: Holds) -> Self {
        Collection {
            holds,
            id: holds.default_id(user),
            segment: holds.as_str().to_string(),
            default: true,
            document: None,
        }
    }

    /// The default collection a path segment names, if it names one.
    pub fn parse_default(user: UserId, segment: &str) -> Option<Self> {
        Holds::parse(segment).map(|h| Self::default_of(user, h))
    }

    /// Its href.
    pub fn href(&self, user: UserId) -> String {
        format!("{}{}/", home(user), encode(&self.segment))
    }

    /// Whether collections of its sort hold items of `kind`.
    pub fn holds(&self, kind: Kind) -> bool {
        self.holds.holds(kind)
    }

    /// The text format of its items.
    pub fn format(&self) -> keepsake_formats::Format {
        match self.holds {
            Holds::Contacts => keepsake_formats::Format::VCard,
            Holds::Calendar => keepsake_formats::Format::ICalendar,
        }
    }

    /// The extension of its items' names.
    pub fn extension(&self) -> &'static str {
        match self.holds {
            Holds::Contacts => "vcf",
            Holds::Calendar => "ics",
        }
    }

    /// The href of an item: its kept resource name if it has one, else `<item id>.<ext>`.
    pub fn href_of(&self, user: UserId, item: ItemId, name: Option<&str>) -> String {
        format!(
            "{}{}",
            self.href(user),
            encode(&listed_name(user, self, item, name))
        )
    }
}

/// The item id of the collection at a path segment: a default's for `contacts` and
/// `calendar`, the id itself for `<collection id>`, else
/// `UUIDv5(user, "keepsake-dav/v1/collection/<segment>")` (the segment is then kept in the
/// collection's document, as an item's chosen name is).
pub fn collection_id(user: UserId, segment: &str) -> ItemId {
    if let Some(h) = Holds::parse(segment) {
        return h.default_id(user);
    }
    if let Some(id) = uuid_named(segment) {
        return ItemId(id);
    }
    let named = format!("keepsake-dav/v1/collection/{segment}");
    ItemId(Uuid::new_v5(&user.0, named.as_bytes()))
}

/// The UUID a name is, when it is one in lower-case hyphenated form (anything else is a
/// chosen name, given back as written).
fn uuid_named(stem: &str) -> Option<Uuid> {
    let id = stem.parse::<Uuid>().ok()?;
    (stem.len() == 36 && stem == id.hyphenated().to_string()).then_some(id)
}

/// The item a resource name in `collection` is while that item is not kept in another
/// collection (see the module docs; `super::collections::item_at` is the whole rule).
pub fn item_of(user: UserId, collection: &Collection, name: &str) -> ItemId {
    let stem = name
        .strip_suffix(&format!(".{}", collection.extension()))
        .unwrap_or(name);
    if let Some(id) = uuid_named(stem) {
        return ItemId(id);
    }
    derived_item(user, collection, name)
}

/// The item a name in `collection` derives: `UUIDv5(user, "keepsake-dav/v1/item/<collection>/<name>")`.
/// Every chosen name is this item; a `<uuid>.<ext>` name is it when the item with that id is
/// kept in another collection (a client putting a copy, or moving an item, under the name it
/// had there).
pub fn derived_item(user: UserId, collection: &Collection, name: &str) -> ItemId {
    let named = format!("keepsake-dav/v1/item/{}/{name}", collection.segment);
    ItemId(Uuid::new_v5(&user.0, named.as_bytes()))
}

/// True when `name` is not the item's plain `<item id>.<ext>` and so must be kept.
pub fn is_chosen_name(collection: &Collection, item: ItemId, name: &str) -> bool {
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
pub fn listed_name(user: UserId, c: &Collection, item: ItemId, name: Option<&str>) -> String {
    match name {
        Some(name) if item_of(user, c, name) == item || derived_item(user, c, name) == item => {
            name.to_string()
        }
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
    /// A collection, by its decoded path segment.
    Collection(UserId, String),
    /// An item resource: its collection's decoded segment, and its decoded name.
    Item(UserId, String, String),
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
        ["users", user, collection] => {
            Some(Target::Collection(user.parse().ok()?, decode(collection)?))
        }
        ["users", user, collection, name] => Some(Target::Item(
            user.parse().ok()?,
            decode(collection)?,
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

    fn calendar() -> Collection {
        Collection::default_of(user(), Holds::Calendar)
    }

    fn contacts() -> Collection {
        Collection::default_of(user(), Holds::Contacts)
    }

    fn made(segment: &str) -> Collection {
        Collection {
            holds: Holds::Calendar,
            id: collection_id(user(), segment),
            segment: segment.to_string(),
            default: false,
            document: None,
        }
    }

    #[test]
    fn an_item_id_name_is_that_item_and_others_are_derived() {
        let id = ItemId(Uuid::from_u128(42));
        let c = calendar();
        assert_eq!(item_of(user(), &c, &format!("{id}.ics")), id);
        let chosen = item_of(user(), &c, "meeting@example.com.ics");
        assert_ne!(chosen, id);
        assert_eq!(chosen, item_of(user(), &c, "meeting@example.com.ics"));
        // Another user, another collection: another item.
        assert_ne!(
            chosen,
            item_of(UserId(Uuid::from_u128(8)), &c, "meeting@example.com.ics")
        );
        assert_ne!(
            chosen,
            item_of(user(), &contacts(), "meeting@example.com.ics")
        );
        assert_ne!(
            chosen,
            item_of(user(), &made("work"), "meeting@example.com.ics")
        );
        // An upper-case UUID is a chosen name (the listing must give it back as written).
        let upper = format!("{}.ics", id.0.hyphenated().to_string().to_uppercase());
        assert_ne!(item_of(user(), &c, &upper), id);
    }

    #[test]
    fn a_uuid_name_of_a_derived_item_is_listed_as_it_was_given() {
        let c = made("work");
        let name = format!("{}.ics", ItemId(Uuid::from_u128(42)));
        let copy = derived_item(user(), &c, &name);
        assert_ne!(copy, item_of(user(), &c, &name));
        assert!(is_chosen_name(&c, copy, &name), "the name must be kept");
        assert_eq!(
            c.href_of(user(), copy, Some(&name)),
            format!("{}{name}", c.href(user()))
        );
    }

    #[test]
    fn collection_ids_are_the_defaults_an_id_or_derived() {
        assert_eq!(
            collection_id(user(), "calendar"),
            Holds::Calendar.default_id(user())
        );
        assert_eq!(
            collection_id(user(), "contacts"),
            Holds::Contacts.default_id(user())
        );
        let id = ItemId(Uuid::from_u128(5));
        assert_eq!(collection_id(user(), &id.to_string()), id);
        let work = collection_id(user(), "Work");
        assert_ne!(
            work,
            collection_id(user(), "work"),
            "names are case-sensitive"
        );
        assert_ne!(work, collection_id(UserId(Uuid::from_u128(8)), "Work"));
    }

    #[test]
    fn hrefs_read_back_as_the_items_they_name() {
        for c in [contacts(), made("Work ä @ b")] {
            for name in ["a b%c.vcf", "x@y.vcf", "ünï.vcf", "plain", "new\nline"] {
                let item = item_of(user(), &c, name);
                let href = c.href_of(user(), item, Some(name));
                assert_eq!(
                    parse_href(&href),
                    Some(Target::Item(user(), c.segment.clone(), name.to_string())),
                    "{href}"
                );
            }
            assert_eq!(
                parse_href(&c.href(user())),
                Some(Target::Collection(user(), c.segment.clone()))
            );
        }
        // A kept name that is not the item's is ignored: the href is the item id's.
        let c = contacts();
        let item = ItemId(Uuid::from_u128(1));
        let href = c.href_of(user(), item, Some("other.vcf"));
        assert_eq!(
            parse_href(&href),
            Some(Target::Item(
                user(),
                c.segment.clone(),
                format!("{item}.vcf")
            ))
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
            Some(Target::Collection(u, "calendar".into()))
        );
        assert_eq!(
            parse_href(&format!("/dav/users/{u}/My%20Notes/")),
            Some(Target::Collection(u, "My Notes".into()))
        );
        assert_eq!(parse_href(&format!("/dav/users/{u}/%2e%2e/")), None);
        assert_eq!(parse_href(&format!("/dav/users/{u}/calendar/%2e%2e")), None);
        assert_eq!(parse_href(&format!("/dav/users/{u}/calendar/a%2Fb")), None);
        assert_eq!(parse_href("/other/"), None);
    }

    proptest::proptest! {
        /// Any name a client may give reads back, through its href, as the same name and item,
        /// in a default collection and in one it made; no href, however odd, panics the parser.
        #[test]
        fn any_name_round_trips_and_no_href_panics(
            name in "[^/]{1,40}", segment in "[^/]{1,20}", href in ".{0,80}", chosen in proptest::bool::ANY,
        ) {
            let _ = parse_href(&href);
            let _ = decode(&href);
            let c = match valid_name(&segment) {
                Some(s) if chosen => made(&s),
                _ => calendar(),
            };
            if let Some(name) = valid_name(&name) {
                let item = item_of(user(), &c, &name);
                let href = c.href_of(user(), item, Some(&name));
                proptest::prop_assert_eq!(parse_href(&href), Some(Target::Item(user(), c.segment.clone(), name.clone())));
                proptest::prop_assert_eq!(item_of(user(), &c, &name), item);
            }
        }
    }
}
