//! PROPFIND, and the properties of each kind of resource.
//!
//! What a request asks for is read once ([`Wanted`]); each resource answers the properties it
//! has, and a `404` propstat lists those it does not (RFC 4918 9.1). `allprop` gives every
//! live property except the data ones (`address-data`, `calendar-data`), as RFC 4791 asks.

use std::fmt::Write as _;

use axum::response::Response;
use keepsake_model::{Holds, UserId, UserState};

use super::answer::{error, multistatus};
use super::collections::contains;
use super::items::{self, Resource};
use super::paths::{self, Collection};
use super::row::{Row, content_type, text};
use super::vocab;
use super::xml::{self, CALDAV, CALSERVER, CARDDAV, DAV, Element};
use crate::api::{ApiError, DeviceAuth, Shared};
use crate::sync_token::SyncToken;

/// Most distinct properties one request may ask for.
pub(crate) const MAX_PROPS: usize = 100;

/// The prefix of a sync token URI; the rest is the REST API's token.
pub(crate) const SYNC_TOKEN_PREFIX: &str = "https://keepsake.app/ns/sync/";

/// What a PROPFIND or REPORT asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Wanted {
    /// Every live property (no data).
    All,
    /// The names only.
    Names,
    /// These, as (namespace, local name).
    Props(Vec<(String, String)>),
}

impl Wanted {
    /// From a `propfind` (or a report) element: its `prop`, `propname` or `allprop`; nothing
    /// is `allprop` (RFC 4918 9.1). More than [`MAX_PROPS`] distinct properties is refused:
    /// each is answered for every resource listed.
    pub(crate) fn of(request: Option<&Element>) -> Result<Wanted, ApiError> {
        let Some(request) = request else {
            return Ok(Wanted::All);
        };
        if request.child(DAV, "propname").is_some() {
            return Ok(Wanted::Names);
        }
        let Some(prop) = request.child(DAV, "prop") else {
            return Ok(Wanted::All);
        };
        let mut props: Vec<(String, String)> = Vec::new();
        for c in &prop.children {
            let name = (c.ns.clone(), c.name.clone());
            if !props.contains(&name) {
                props.push(name);
            }
            if props.len() > MAX_PROPS {
                return Err(ApiError::malformed(format!(
                    "more than {MAX_PROPS} properties asked for"
                )));
            }
        }
        Ok(Wanted::Props(props))
    }

    /// Whether the data (address-data / calendar-data) is asked for.
    pub(crate) fn wants_data(&self) -> bool {
        match self {
            Wanted::Props(props) => props.iter().any(|(ns, n)| {
                matches!(
                    (ns.as_str(), n.as_str()),
                    (CARDDAV, "address-data") | (CALDAV, "calendar-data")
                )
            }),
            _ => false,
        }
    }
}

/// One resource's properties: each known one with its inner XML.
pub(crate) struct Props {
    known: Vec<(&'static str, &'static str, String)>,
    /// Names of data properties this resource would have (listed under `allprop` as absent
    /// from it, and given when asked for by name).
    data: Option<(&'static str, &'static str, String)>,
}

impl Props {
    fn new() -> Self {
        Self {
            known: Vec::new(),
            data: None,
        }
    }

    fn add(&mut self, ns: &'static str, name: &'static str, inner: impl Into<String>) {
        self.known.push((ns, name, inner.into()));
    }

    /// Writes one `response` for `href` with the properties `wanted`.
    pub(crate) fn write(&self, out: &mut String, href: &str, wanted: &Wanted) {
        let _ = write!(out, "<d:response><d:href>{}</d:href>", xml::escape(href));
        let mut found = String::new();
        let mut missing = String::new();
        let all = || self.known.iter().chain(self.data.iter());
        match wanted {
            Wanted::All => {
                for (ns, name, inner) in &self.known {
                    property(&mut found, ns, name, inner);
                }
            }
            Wanted::Names => {
                for (ns, name, _) in all() {
                    found.push_str(&xml::open_tag(ns, name, true));
                }
            }
            Wanted::Props(props) => {
                for (ns, name) in props {
                    match all().find(|(n, m, _)| n == ns && m == name) {
                        Some((ns, name, inner)) => property(&mut found, ns, name, inner),
                        None => missing.push_str(&xml::open_tag(ns, name, true)),
                    }
                }
            }
        }
        if !found.is_empty() || missing.is_empty() {
            let _ = write!(
                out,
                "<d:propstat><d:prop>{found}</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat>"
            );
        }
        if !missing.is_empty() {
            let _ = write!(
                out,
                "<d:propstat><d:prop>{missing}</d:prop><d:status>HTTP/1.1 404 Not Found</d:status></d:propstat>"
            );
        }
        out.push_str("</d:response>");
    }
}

fn property(out: &mut String, ns: &str, name: &str, inner: &str) {
    if inner.is_empty() {
        out.push_str(&xml::open_tag(ns, name, true));
    } else {
        out.push_str(&xml::open_tag(ns, name, false));
        out.push_str(inner);
        out.push_str(&xml::close_tag(ns, name));
    }
}

fn href_element(href: &str) -> String {
    format!("<d:href>{}</d:href>", xml::escape(href))
}

fn privileges() -> String {
    [
        "read",
        "write",
        "write-properties",
        "write-content",
        "bind",
        "unbind",
        "read-current-user-privilege-set",
    ]
    .iter()
    .map(|p| format!("<d:privilege><d:{p}/></d:privilege>"))
    .collect()
}

fn root_props(user: UserId) -> Props {
    let mut p = Props::new();
    p.add(DAV, "resourcetype", "<d:collection/>");
    p.add(
        DAV,
        "current-user-principal",
        href_element(&paths::home(user)),
    );
    p.add(DAV, "displayname", "Keepsake");
    p
}

fn home_props(user: UserId) -> Props {
    let home = href_element(&paths::home(user));
    let mut p = Props::new();
    p.add(DAV, "resourcetype", "<d:collection/><d:principal/>");
    p.add(DAV, "current-user-principal", home.clone());
    p.add(DAV, "principal-URL", home.clone());
    p.add(DAV, "owner", home.clone());
    p.add(CARDDAV, "addressbook-home-set", home.clone());
    p.add(CALDAV, "calendar-home-set", home);
    p.add(DAV, "displayname", user.to_string());
    p.add(DAV, "current-user-privilege-set", privileges());
    p
}

/// The sync token of a user at `seq`, as a URI.
pub(crate) fn sync_token(state: &Shared, seq: u64) -> Result<String, ApiError> {
    let store_id = state.ready()?.log.descriptor().store_id;
    Ok(format!(
        "{SYNC_TOKEN_PREFIX}{}",
        SyncToken::at_seq(store_id, seq).encode()
    ))
}

fn collection_props(
    state: &Shared,
    user: UserId,
    c: &Collection,
    last_seq: u64,
) -> Result<Props, ApiError> {
    let token = sync_token(state, last_seq)?;
    let home = href_element(&paths::home(user));
    let mut p = Props::new();
    let (kind, reports) = match c.holds {
        Holds::Contacts => (
            "<d:collection/><card:addressbook/>",
            vec!["<card:addressbook-multiget/>", "<card:addressbook-query/>"],
        ),
        Holds::Calendar => (
            "<d:collection/><cal:calendar/>",
            vec![
                "<cal:calendar-multiget/>",
                "<cal:calendar-query/>",
                "<cal:free-busy-query/>",
            ],
        ),
    };
    p.add(DAV, "resourcetype", kind);
    // What the collection's document keeps, as text, exactly as a client set it.
    let fields = c.document.as_ref().and_then(|d| d.to_object().ok());
    let kept = |f: &str| {
        fields
            .as_ref()
            .and_then(|o| o.get(f))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let name = kept("name").unwrap_or_else(|| match (c.default, c.holds) {
        (true, Holds::Contacts) => "Contacts".into(),
        (true, Holds::Calendar) => "Calendar".into(),
        (false, _) => c.segment.clone(),
    });
    p.add(DAV, "displayname", xml::escape(&name).into_owned());
    for (ns, prop, f, holds) in vocab::FIELDS {
        if *prop == "displayname" || holds.is_some_and(|h| h != c.holds) {
            continue;
        }
        if let Some(value) = kept(f) {
            p.add(ns, prop, xml::escape(&value).into_owned());
        }
    }
    let reports: String = reports
        .iter()
        .chain(["<d:sync-collection/>"].iter())
        .map(|r| format!("<d:supported-report><d:report>{r}</d:report></d:supported-report>"))
        .collect();
    p.add(DAV, "supported-report-set", reports);
    p.add(DAV, "sync-token", xml::escape(&token).into_owned());
    // The ctag is the sync-token: it moves whenever the collection may have changed.
    p.add(CALSERVER, "getctag", xml::escape(&token).into_owned());
    p.add(DAV, "current-user-principal", home.clone());
    p.add(DAV, "owner", home);
    p.add(DAV, "current-user-privilege-set", privileges());
    match c.holds {
        Holds::Contacts => {
            p.add(
                CARDDAV,
                "supported-address-data",
                "<card:address-data-type content-type=\"text/vcard\" version=\"3.0\"/><card:address-data-type content-type=\"text/vcard\" version=\"4.0\"/>",
            );
            p.add(CARDDAV, "max-resource-size", max_resource_size(state));
        }
        Holds::Calendar => {
            let comps: String = vocab::components(c.document.as_ref())
                .iter()
                .map(|comp| format!("<cal:comp name=\"{}\"/>", xml::escape(comp)))
                .collect();
            p.add(CALDAV, "supported-calendar-component-set", comps);
            p.add(
                CALDAV,
                "supported-calendar-data",
                "<cal:calendar-data content-type=\"text/calendar\" version=\"2.0\"/>",
            );
            p.add(CALDAV, "max-resource-size", max_resource_size(state));
        }
    }
    Ok(p)
}

/// The largest text a PUT may hold: the stored document carries both the converted JSON and
/// the original text, and is limited as a whole, so about half of the document limit.
fn max_resource_size(state: &Shared) -> String {
    (state.limits.max_document_bytes / 2).to_string()
}

/// An item's properties; the text is exported only when `with_data`.
/// `shape`: how a CalDAV `calendar-data` asks a recurring item to be written (its instances
/// in a range, `keepsake_formats::instances::expand`; or only the exceptions that matter to
/// it, `limit_recurrence_set`).
pub(crate) fn item_props(
    row: &Row,
    c: &Collection,
    with_data: bool,
    shape: Option<super::time_range::Shape>,
) -> Props {
    let mut p = Props::new();
    p.add(DAV, "resourcetype", "");
    p.add(DAV, "getetag", xml::escape(&row.etag()).into_owned());
    p.add(DAV, "getcontenttype", content_type(c, row.kind));
    p.add(
        DAV,
        "getlastmodified",
        row.changed_at
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string(),
    );
    if with_data && let Some(text) = row.document.as_ref().and_then(|d| text(c, row.kind, d)) {
        use super::time_range::Shape;
        use keepsake_formats::instances::{expand, limit_recurrence_set};
        let text = match shape {
            Some(Shape::Expand((start, end))) if c.holds == Holds::Calendar => {
                expand(&text, start, end).unwrap_or(text)
            }
            Some(Shape::Limit((start, end))) if c.holds == Holds::Calendar => {
                limit_recurrence_set(&text, start, end).unwrap_or(text)
            }
            _ => text,
        };
        p.add(DAV, "getcontentlength", text.len().to_string());
        let (ns, name) = match c.holds {
            Holds::Contacts => (CARDDAV, "address-data"),
            Holds::Calendar => (CALDAV, "calendar-data"),
        };
        p.data = Some((ns, name, xml::escape(&text).into_owned()));
    }
    p
}

/// The seq of the newest change after `after` (a delete included) that may have changed the
/// collection, or `after` when there is none: what its sync-token and ctag stand for. That is
/// any change to an item of its kinds (an item moved out of it is in another collection now,
/// and its clients must still hear that it left) or to the collection itself; so a change to
/// a contact moves no calendar's token. (The view keeps items by seq: one pass.)
pub(crate) fn collection_seq(u: &UserState, c: &Collection, after: u64) -> u64 {
    u.items_changed_after(after)
        .filter(|i| c.holds(i.kind) || i.item_id == c.id)
        .map(|i| i.seq)
        .last()
        .unwrap_or(after)
}

/// [`collection_seq`] of a user's collection, read from the view.
async fn seq_of(state: &Shared, user: UserId, c: &Collection) -> Result<u64, ApiError> {
    Ok(state
        .ready()?
        .log
        .user(&user, |u: &UserState| collection_seq(u, c, 0))
        .await?)
}

/// The live items of a collection, in seq order, and the collection's seq ([`collection_seq`]).
pub(crate) async fn rows(
    state: &Shared,
    user: UserId,
    c: &Collection,
) -> Result<(Vec<Row>, u64), ApiError> {
    let log = &state.ready()?.log;
    Ok(log
        .user(&user, |u: &UserState| {
            let rows = u
                .items_changed_after(0)
                .filter(|i| !i.deleted && contains(user, c, i))
                .map(Row::of)
                .collect();
            (rows, collection_seq(u, c, 0))
        })
        .await?)
}

pub(crate) fn propfind_root(auth: DeviceAuth, request: Option<&Element>, _depth: u8) -> Response {
    let wanted = match Wanted::of(request) {
        Ok(w) => w,
        Err(e) => return error(e),
    };
    let mut out = String::from(xml::MULTISTATUS_OPEN);
    root_props(auth.user).write(&mut out, paths::ROOT, &wanted);
    out.push_str(xml::MULTISTATUS_CLOSE);
    multistatus(out)
}

pub(crate) async fn propfind_home(
    state: &Shared,
    auth: DeviceAuth,
    request: Option<&Element>,
    depth: u8,
) -> Response {
    let wanted = match Wanted::of(request) {
        Ok(w) => w,
        Err(e) => return error(e),
    };
    let mut out = String::from(xml::MULTISTATUS_OPEN);
    home_props(auth.user).write(&mut out, &paths::home(auth.user), &wanted);
    if depth > 0 {
        let all = match super::collections::all(state, auth.user).await {
            Ok(all) => all,
            Err(e) => return error(e),
        };
        for c in &all {
            let seq = match seq_of(state, auth.user, c).await {
                Ok(seq) => seq,
                Err(e) => return error(e),
            };
            match collection_props(state, auth.user, c, seq) {
                Ok(p) => p.write(&mut out, &c.href(auth.user), &wanted),
                Err(e) => return error(e),
            }
        }
    }
    out.push_str(xml::MULTISTATUS_CLOSE);
    multistatus(out)
}

pub(crate) async fn propfind_collection(
    state: &Shared,
    auth: DeviceAuth,
    c: &Collection,
    request: Option<&Element>,
    depth: u8,
) -> Response {
    let wanted = match Wanted::of(request) {
        Ok(w) => w,
        Err(e) => return error(e),
    };
    let (rows, last_seq) = if depth > 0 {
        match rows(state, auth.user, c).await {
            Ok(r) => r,
            Err(e) => return error(e),
        }
    } else {
        match seq_of(state, auth.user, c).await {
            Ok(seq) => (Vec::new(), seq),
            Err(e) => return error(e),
        }
    };
    let mut out = String::from(xml::MULTISTATUS_OPEN);
    match collection_props(state, auth.user, c, last_seq) {
        Ok(p) => p.write(&mut out, &c.href(auth.user), &wanted),
        Err(e) => return error(e),
    }
    // Members are listed without their text (address-data / calendar-data are for REPORTs,
    // RFC 6352 / RFC 4791): a Depth 1 PROPFIND of a large collection stays small.
    for row in &rows {
        item_props(row, c, false, None).write(&mut out, &row.href(auth.user, c), &wanted);
    }
    out.push_str(xml::MULTISTATUS_CLOSE);
    multistatus(out)
}

pub(crate) async fn propfind_item(
    state: &Shared,
    resource: &Resource,
    request: Option<&Element>,
) -> Response {
    let wanted = match Wanted::of(request) {
        Ok(w) => w,
        Err(e) => return error(e),
    };
    let row = match items::current(state, resource).await {
        Ok(Some(row)) if !row.deleted => row,
        Ok(_) => return error(ApiError::not_found("not_found", "no such resource")),
        Err(e) => return error(e),
    };
    let with_data = !matches!(wanted, Wanted::All);
    let mut out = String::from(xml::MULTISTATUS_OPEN);
    item_props(&row, &resource.collection, with_data, None).write(
        &mut out,
        &row.href(resource.auth.user, &resource.collection),
        &wanted,
    );
    out.push_str(xml::MULTISTATUS_CLOSE);
    multistatus(out)
}

/// PROPPATCH of a principal: no property of it is writable, so every property named is
/// answered `403` in one multistatus, as RFC 4918 9.2 allows; clients keep their local value.
/// (A collection's are, `super::collection_writes::proppatch`.)
pub(crate) fn proppatch(href: &str, request: Option<&Element>) -> Response {
    let Some(request) = request.filter(|r| r.is(DAV, "propertyupdate")) else {
        return error(ApiError::malformed(
            "a PROPPATCH body is a DAV:propertyupdate",
        ));
    };
    let mut names = String::new();
    for update in request
        .children
        .iter()
        .filter(|c| c.is(DAV, "set") || c.is(DAV, "remove"))
    {
        for prop in update.children_named(DAV, "prop") {
            for p in &prop.children {
                names.push_str(&xml::open_tag(&p.ns, &p.name, true));
            }
        }
    }
    let mut out = String::from(xml::MULTISTATUS_OPEN);
    let _ = write!(
        out,
        "<d:response><d:href>{}</d:href><d:propstat><d:prop>{names}</d:prop><d:status>HTTP/1.1 403 Forbidden</d:status></d:propstat></d:response>",
        xml::escape(href)
    );
    out.push_str(xml::MULTISTATUS_CLOSE);
    multistatus(out)
}

/// `principal-property-search` (RFC 3744 9.4) on the root or a home: a device sees one
/// principal, its user's, which matches when every `property-search` matches its display name
/// (the user id; case-insensitive substring); a search on any other property does not match.
/// The answer lists it with the `prop` asked for.
pub(crate) fn principal_search(auth: DeviceAuth, request: &Element) -> Response {
    let display = auth.user.to_string().to_lowercase();
    let matches = request
        .children_named(DAV, "property-search")
        .all(|search| {
            let on_name = search
                .child(DAV, "prop")
                .is_some_and(|p| p.children.iter().any(|c| c.is(DAV, "displayname")));
            let text = search
                .child(DAV, "match")
                .map(|m| m.text.trim().to_lowercase())
                .unwrap_or_default();
            on_name && display.contains(&text)
        });
    let wanted = match Wanted::of(Some(request)) {
        // The caldav library (3.x) writes the properties it wants beside an empty `prop`
        // rather than inside it: read them there too, rather than answer none.
        Ok(Wanted::Props(props)) if props.is_empty() => Wanted::Props(
            request
                .children
                .iter()
                .filter(|c| {
                    !c.is(DAV, "prop")
                        && !c.is(DAV, "property-search")
                        && !c.is(DAV, "apply-to-principal-collection-set")
                })
                .map(|c| (c.ns.clone(), c.name.clone()))
                .take(MAX_PROPS)
                .collect(),
        ),
        Ok(w) => w,
        Err(e) => return error(e),
    };
    let mut out = String::from(xml::MULTISTATUS_OPEN);
    if matches {
        home_props(auth.user).write(&mut out, &paths::home(auth.user), &wanted);
    }
    out.push_str(xml::MULTISTATUS_CLOSE);
    multistatus(out)
}
