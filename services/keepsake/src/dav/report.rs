//! REPORT on a collection: `sync-collection` (RFC 6578), `addressbook-multiget` /
//! `calendar-multiget`, and `addressbook-query` / `calendar-query`.
//!
//! `sync-collection` reads the user's items changed after the token's seq (the view keeps
//! them in seq order), keeps those of the collection, and answers each at its latest: a live
//! item with its properties, a deleted one with `404`. With `DAV:limit`, a partial answer
//! ends with a token at the last item it includes (never past one it left out) and a `507`
//! for the collection, as RFC 6578 3.6 says. The token is the REST API's, so the two never
//! disagree about what a position is.
//!
//! Queries: `calendar-query` filters by component (VEVENT, VTODO, VJOURNAL), by a component's
//! `time-range` (recurrences expanded, [`super::time_range`]) and by its `prop-filter`s
//! (`is-not-defined`, `text-match`); `addressbook-query` by its `prop-filter`s (anyof/allof,
//! the four match types) — both through `keepsake_formats::filters`, with their
//! `param-filter`s and, in CalDAV, a property's own `time-range`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keepsake_model::{Holds, Kind, StateRead as _, UserState};

use super::answer::{error, multistatus, precondition};
use super::collections::{contains, held};
use super::paths::{self, Collection, Target};
use super::props::{SYNC_TOKEN_PREFIX, Wanted, item_props, sync_token};
use super::row::{Row, resource_name};
use super::time_range::{self, Range};
use super::vocab::component_of;
use super::xml::{self, CALDAV, CARDDAV, DAV, Element};
use crate::api::{ApiError, DeviceAuth, Shared};
use crate::sync_token::SyncToken;
use keepsake_formats::filters::{self, MatchType, ParamFilter, PropFilter, PropTest, TextMatch};

/// Most items of one sync answer whose last-seen version is read from their own history
/// (past this, the user's log up to the token is read once instead).
const MAX_HISTORY_READS: usize = 8;
/// Most hrefs one multiget may name (clients send pages of 10 to 500).
const MAX_HREFS: usize = 1_000;
/// Most items one answer carries with their text: a sync-collection or query asking for the
/// data of more is cut there (a `507` and a token that continues, RFC 6578 3.6), so one
/// answer holds at most this many documents.
const MAX_DATA_RESULTS: usize = 1_000;

pub(crate) async fn report(
    state: &Shared,
    auth: DeviceAuth,
    c: &Collection,
    request: &Element,
) -> Response {
    match (request.ns.as_str(), request.name.as_str(), c.holds) {
        (DAV, "sync-collection", _) => sync_collection(state, auth, c, request).await,
        (CARDDAV, "addressbook-multiget", Holds::Contacts)
        | (CALDAV, "calendar-multiget", Holds::Calendar) => multiget(state, auth, c, request).await,
        (CARDDAV, "addressbook-query", Holds::Contacts)
        | (CALDAV, "calendar-query", Holds::Calendar) => query(state, auth, c, request).await,
        (CALDAV, "free-busy-query", Holds::Calendar) => free_busy(state, auth, c, request).await,
        _ => precondition(StatusCode::FORBIDDEN, DAV, "supported-report"),
    }
}

/// One entry of a `sync-collection` answer, as read from the view.
enum Entry {
    /// A live item of the collection: answered with its properties.
    Show(Row),
    /// An item changed since the token that is not a live item of the collection now (deleted,
    /// or moved to another collection). It is answered `404` when what the client last saw of
    /// it (its newest event at or before the token: at that seq, or `None` when the view's
    /// links do not reach it) was a live item of this collection; else not at all.
    Seen { row: Row, at: Option<u64> },
}

/// The seq a `sync-token` element names: `None` for an initial sync (empty); `Err` for a
/// token this store did not issue or one ahead of the user's log.
fn token_seq(
    state: &Shared,
    text: &str,
    have: u64,
    user: keepsake_model::UserId,
) -> Result<Option<u64>, ()> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let token = text
        .strip_prefix(SYNC_TOKEN_PREFIX)
        .and_then(SyncToken::decode)
        .ok_or(())?;
    let store_id = state.ready().map_err(|_| ())?.log.descriptor().store_id;
    if token.store_id != store_id {
        return Err(());
    }
    if token.seq > have {
        tracing::warn!(
            %user,
            token_seq = token.seq,
            server_seq = have,
            "a DAV client is ahead of the server"
        );
        return Err(());
    }
    Ok(Some(token.seq))
}

/// How many items a report answers: its `limit`'s `nresults`, and at most
/// [`MAX_DATA_RESULTS`] when it asks for the items' text.
fn limit(request: &Element, with_data: bool) -> Result<Option<usize>, ApiError> {
    let asked = nresults(request)?;
    Ok(if with_data {
        Some(asked.map_or(MAX_DATA_RESULTS, |l| l.min(MAX_DATA_RESULTS)))
    } else {
        asked
    })
}

/// The `DAV:limit` (or CardDAV `limit`) of a report: its `nresults`, if given.
fn nresults(request: &Element) -> Result<Option<usize>, ApiError> {
    // RFC 6578 puts it in DAV:, RFC 6352's addressbook-query in CardDAV's namespace.
    let Some(n) = [DAV, CARDDAV].iter().find_map(|ns| {
        request
            .child(ns, "limit")
            .and_then(|l| l.child(ns, "nresults"))
    }) else {
        return Ok(None);
    };
    match n.text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(ApiError::malformed(
            "DAV:nresults must be a positive whole number",
        )),
    }
}

async fn sync_collection(
    state: &Shared,
    auth: DeviceAuth,
    c: &Collection,
    request: &Element,
) -> Response {
    let (wanted, shape) = match asked(request) {
        Ok(a) => a,
        Err(refused) => return *refused,
    };
    let limit = match limit(request, wanted.wants_data()) {
        Ok(l) => l,
        Err(e) => return error(e),
    };
    let ready = match state.ready() {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    let token_text = request
        .child(DAV, "sync-token")
        .map(|t| t.text.clone())
        .unwrap_or_default();
    let have = match ready.log.last_seq(&auth.user).await {
        Ok(seq) => seq,
        Err(e) => return error(e.into()),
    };
    let since = match token_seq(state, &token_text, have, auth.user) {
        Ok(s) => s,
        Err(()) => return precondition(StatusCode::FORBIDDEN, DAV, "valid-sync-token"),
    };
    let after = since.unwrap_or(0);
    let user = auth.user;
    let taken = ready
        .log
        .user(&auth.user, |u: &UserState| {
            let cap = limit.unwrap_or(usize::MAX);
            let (mut entries, mut counted, mut last, mut more) = (Vec::new(), 0usize, after, false);
            // Every item of the collection's kinds changed after the token is a candidate: one
            // moved out of this collection is answered here as gone.
            for i in u.items_changed_after(after).filter(|i| c.holds(i.kind)) {
                let shown = !i.deleted && contains(user, c, i);
                if since.is_none() && !shown {
                    continue;
                }
                if counted == cap {
                    more = true;
                    break;
                }
                counted += 1;
                last = i.seq;
                if shown {
                    entries.push(Entry::Show(Row::of(i)));
                } else {
                    match u.seq_seen_at(&i.item_id, after) {
                        // Made after the token: the client never saw it.
                        Some(None) => {}
                        Some(at) => entries.push(Entry::Seen {
                            row: Row::of(i),
                            at,
                        }),
                        None => entries.push(Entry::Seen {
                            row: Row::of(i),
                            at: None,
                        }),
                    }
                }
            }
            let seq = if more {
                last
            } else {
                super::props::collection_seq(u, c, after)
            };
            (entries, more, seq)
        })
        .await;
    let (entries, more, seq) = match taken {
        Ok(t) => t,
        Err(e) => return error(e.into()),
    };
    // What the client last saw of each item no longer shown: one read picks those events.
    let gone = match seen_hrefs(state, user, have, after, c, &entries).await {
        Ok(g) => g,
        Err(e) => return error(e),
    };
    let token = match sync_token(state, seq) {
        Ok(t) => t,
        Err(e) => return error(e),
    };
    let with_data = wanted.wants_data();
    let mut out = String::from(xml::MULTISTATUS_OPEN);
    let mut gone = gone.into_iter();
    for entry in &entries {
        match entry {
            Entry::Show(row) => {
                item_props(row, c, with_data, shape).write(&mut out, &row.href(user, c), &wanted)
            }
            Entry::Seen { .. } => {
                if let Some(Some(href)) = gone.next() {
                    out.push_str(&format!(
                        "<d:response><d:href>{}</d:href><d:status>HTTP/1.1 404 Not Found</d:status></d:response>",
                        xml::escape(&href)
                    ));
                }
            }
        }
    }
    if more {
        out.push_str(&format!(
            "<d:response><d:href>{}</d:href><d:status>HTTP/1.1 507 Insufficient Storage</d:status><d:error><d:number-of-matches-within-limits/></d:error></d:response>",
            xml::escape(&c.href(user))
        ));
    }
    out.push_str(&format!(
        "<d:sync-token>{}</d:sync-token>",
        xml::escape(&token)
    ));
    out.push_str(xml::MULTISTATUS_CLOSE);
    multistatus(out)
}

/// For each [`Entry::Seen`] in `entries`, in order: the href the client knows the item by,
/// when what it last saw (the item's newest event at or before `after`) was a live item of
/// `c`; else `None`. The events at known seqs are read in one pass; an item whose link the
/// view lacks reads its own history.
async fn seen_hrefs(
    state: &Shared,
    user: keepsake_model::UserId,
    have: u64,
    after: u64,
    c: &Collection,
    entries: &[Entry],
) -> Result<Vec<Option<String>>, ApiError> {
    use keepsake_log::{Pick, UpTo};
    let seqs: std::collections::HashSet<u64> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Seen { at: Some(seq), .. } => Some(*seq),
            _ => None,
        })
        .collect();
    let log = &state.ready()?.log;
    let mut events = std::collections::HashMap::new();
    if !seqs.is_empty() {
        for event in log
            .user_events_picked(&user, UpTo::Seq(have), Pick::Seqs(seqs))
            .await?
        {
            events.insert(event.seq, event);
        }
    }
    // Items whose link the view lacks: a few read their own histories; more than that read
    // the user's log up to the token once, rather than once each.
    let unlinked: Vec<keepsake_model::ItemId> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Seen { row, at: None } => Some(row.item_id),
            _ => None,
        })
        .collect();
    let mut newest: std::collections::HashMap<keepsake_model::ItemId, keepsake_model::Event> =
        std::collections::HashMap::new();
    if unlinked.len() > MAX_HISTORY_READS {
        let wanted: std::collections::HashSet<_> = unlinked.iter().copied().collect();
        for event in log
            .user_events_picked(&user, UpTo::Seq(after), Pick::After(0))
            .await?
        {
            if wanted.contains(&event.item_id) {
                newest.insert(event.item_id, event);
            }
        }
    } else {
        for id in unlinked {
            if let Some(event) = log
                .user_events_picked(&user, UpTo::Seq(after), Pick::Item(id))
                .await?
                .pop()
            {
                newest.insert(id, event);
            }
        }
    }
    let mut out = Vec::new();
    for entry in entries {
        let Entry::Seen { row, at } = entry else {
            continue;
        };
        let event = match at {
            Some(seq) => events.get(seq).cloned(),
            None => newest.get(&row.item_id).cloned(),
        };
        out.push(event.and_then(|e| {
            let document = e.document.as_ref()?;
            held(user, c, e.kind, document)
                .then(|| c.href_of(user, e.item_id, resource_name(document).as_deref()))
        }));
    }
    Ok(out)
}

/// `free-busy-query` (RFC 4791 7.10): a VFREEBUSY of the busy periods of the user's events
/// in the time range, which must have both ends.
async fn free_busy(
    state: &Shared,
    auth: DeviceAuth,
    c: &Collection,
    request: &Element,
) -> Response {
    let range = match time_range::of(request) {
        Ok(Some(Range {
            start: Some(start),
            end: Some(end),
        })) if start < end => (start, end),
        _ => return precondition(StatusCode::FORBIDDEN, CALDAV, "valid-filter"),
    };
    let (rows, _) = match super::props::rows(state, auth.user, c).await {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    let mut periods: Vec<_> = rows
        .iter()
        .filter(|r| r.kind == Kind::Event)
        .filter_map(|r| {
            let text = super::row::text(c, r.kind, r.document.as_ref()?)?;
            Some(keepsake_formats::instances::busy(&text, range.0, range.1))
        })
        .flatten()
        .collect();
    periods.sort();
    let utc = |t: chrono::DateTime<chrono::Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
    let mut body = format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Keepsake//CalDAV//EN\r\nBEGIN:VFREEBUSY\r\nDTSTAMP:{}\r\nDTSTART:{}\r\nDTEND:{}\r\n",
        utc(state.clock.now()),
        utc(range.0),
        utc(range.1)
    );
    for (from, to) in periods {
        body.push_str(&format!(
            "FREEBUSY;FBTYPE=BUSY:{}/{}\r\n",
            utc(from),
            utc(to)
        ));
    }
    body.push_str("END:VFREEBUSY\r\nEND:VCALENDAR\r\n");
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/calendar; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

async fn multiget(state: &Shared, auth: DeviceAuth, c: &Collection, request: &Element) -> Response {
    let (wanted, shape) = match asked(request) {
        Ok(a) => a,
        Err(refused) => return *refused,
    };
    let mut hrefs: Vec<&str> = Vec::new();
    for h in request.children_named(DAV, "href") {
        let href = h.text.trim();
        if !hrefs.contains(&href) {
            hrefs.push(href);
        }
        if hrefs.len() > MAX_HREFS {
            break;
        }
    }
    if hrefs.len() > MAX_HREFS {
        return error(ApiError::malformed(format!(
            "{} hrefs in one multiget; the limit is {MAX_HREFS}",
            hrefs.len()
        )));
    }
    let names: Vec<Option<String>> = hrefs
        .iter()
        .map(|href| match paths::parse_href(href) {
            Some(Target::Item(user, col, name)) if user == auth.user && col == c.segment => {
                Some(name)
            }
            _ => None,
        })
        .collect();
    let log = match state.ready() {
        Ok(r) => &r.log,
        Err(e) => return error(e),
    };
    let rows = match log
        .user(&auth.user, |u: &UserState| {
            names
                .iter()
                .map(|name| {
                    let id = super::collections::item_at(u, auth.user, c, name.as_deref()?);
                    u.item(&id)
                        .filter(|i| !i.deleted && contains(auth.user, c, i))
                        .map(Row::of)
                })
                .collect::<Vec<_>>()
        })
        .await
    {
        Ok(rows) => rows,
        Err(e) => return error(e.into()),
    };
    let with_data = wanted.wants_data();
    let mut out = String::from(xml::MULTISTATUS_OPEN);
    for (href, row) in hrefs.iter().zip(rows) {
        match row {
            Some(row) => item_props(&row, c, with_data, shape).write(&mut out, href, &wanted),
            None => out.push_str(&format!(
                "<d:response><d:href>{}</d:href><d:status>HTTP/1.1 404 Not Found</d:status></d:response>",
                xml::escape(href)
            )),
        }
    }
    out.push_str(xml::MULTISTATUS_CLOSE);
    multistatus(out)
}

/// What a query asks of one kind: its time range, and its property filters.
struct KindFilter {
    kind: Kind,
    range: Option<Range>,
    props: Vec<PropFilter>,
    /// A nested `comp-filter` on `VALARM`: with a time range, an alarm must fire in it; with
    /// `is-not-defined`, there must be no alarm; else there must be one.
    alarm: Option<AlarmTest>,
}

#[derive(Clone, Copy)]
enum AlarmTest {
    Fires(Range),
    Defined,
    NotDefined,
}

/// The `VALARM` comp-filter inside a component's, if any.
fn alarm_test(filter: &Element) -> Result<Option<AlarmTest>, String> {
    let Some(alarm) = filter.children_named(CALDAV, "comp-filter").find(|f| {
        f.attr("name")
            .is_some_and(|n| n.eq_ignore_ascii_case("VALARM"))
    }) else {
        return Ok(None);
    };
    if alarm.child(CALDAV, "is-not-defined").is_some() {
        return Ok(Some(AlarmTest::NotDefined));
    }
    Ok(Some(match time_range::of(alarm)? {
        Some(range) => AlarmTest::Fires(range),
        None => AlarmTest::Defined,
    }))
}

/// A `text-match` element (CalDAV's and CardDAV's).
fn text_match(el: &Element) -> TextMatch {
    let match_type = match el.attr("match-type") {
        Some("equals") => MatchType::Equals,
        Some("starts-with") => MatchType::StartsWith,
        Some("ends-with") => MatchType::EndsWith,
        _ => MatchType::Contains,
    };
    TextMatch {
        text: el.text.clone(),
        negate: el
            .attr("negate-condition")
            .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
        match_type,
        caseless: el.attr("collation") != Some("i;octet"),
    }
}

/// What a `prop-filter` or `param-filter` element asks: `is-not-defined`, its `text-match`es
/// (all of them when `all`), or that the property or parameter is there.
fn test_of(f: &Element, ns: &str, all: bool, more: bool) -> PropTest {
    let matches: Vec<TextMatch> = f.children_named(ns, "text-match").map(text_match).collect();
    if f.child(ns, "is-not-defined").is_some() {
        PropTest::NotDefined
    } else if matches.is_empty() && !more {
        PropTest::Defined
    } else {
        PropTest::Text { matches, all }
    }
}

/// The `prop-filter`s under `parent` in namespace `ns`, with their `param-filter`s and (CalDAV)
/// `time-range`. CalDAV asks every test of a filter; CardDAV any, or all with `test="allof"`.
/// A time range that cannot be read is `Err`.
fn prop_filters(parent: &Element, ns: &str) -> Result<Vec<PropFilter>, String> {
    let mut out = Vec::new();
    for f in parent.children_named(ns, "prop-filter") {
        let Some(name) = f.attr("name") else {
            continue;
        };
        let all = ns == CALDAV || f.attr("test") == Some("allof");
        let params: Vec<ParamFilter> = f
            .children_named(ns, "param-filter")
            .filter_map(|p| {
                Some(ParamFilter {
                    name: p.attr("name")?.to_string(),
                    test: test_of(p, ns, true, false),
                })
            })
            .collect();
        let range = match time_range::of(f)? {
            Some(r) if ns == CALDAV => Some((r.start, r.end)),
            _ => None,
        };
        // Parameter filters or a range with no text-match still need the property there,
        // and are combined as the filter's test says (a `Text` with no matches).
        let more = !params.is_empty() || range.is_some();
        out.push(PropFilter {
            name: name.to_string(),
            test: test_of(f, ns, all, more),
            params,
            range,
        });
    }
    Ok(out)
}

/// The kinds a `calendar-query` filter asks for, each with its time range and property
/// filters: those of the components named under `VCALENDAR` (every calendar kind, unfiltered,
/// when it names none; none of a kind whose comp-filter says `is-not-defined`). `Err` for a
/// time range that cannot be read.
fn filtered_kinds(request: &Element) -> Result<Vec<KindFilter>, String> {
    let all = [Kind::Event, Kind::Task, Kind::Note]
        .into_iter()
        .map(|kind| KindFilter {
            kind,
            range: None,
            props: Vec::new(),
            alarm: None,
        })
        .collect();
    let Some(calendar) = request
        .child(CALDAV, "filter")
        .and_then(|f| f.child(CALDAV, "comp-filter"))
        .filter(|f| {
            f.attr("name")
                .is_some_and(|n| n.eq_ignore_ascii_case("VCALENDAR"))
        })
    else {
        return Ok(all);
    };
    let mut kinds = Vec::new();
    let mut named = false;
    for filter in calendar.children_named(CALDAV, "comp-filter") {
        named = true;
        let kind = match filter.attr("name").map(str::to_ascii_uppercase).as_deref() {
            Some("VEVENT") => Kind::Event,
            Some("VTODO") => Kind::Task,
            Some("VJOURNAL") => Kind::Note,
            _ => continue,
        };
        if filter.child(CALDAV, "is-not-defined").is_some() {
            continue;
        }
        kinds.push(KindFilter {
            kind,
            range: time_range::of(filter)?,
            props: prop_filters(filter, CALDAV)?,
            alarm: alarm_test(filter)?,
        });
    }
    Ok(if named { kinds } else { all })
}

/// What a report asks of each item: its properties, and how its `calendar-data` is shaped
/// (`expand` or `limit-recurrence-set`; one without good bounds is refused with
/// `valid-filter`).
fn asked(request: &Element) -> Result<(Wanted, Option<time_range::Shape>), Box<Response>> {
    let wanted = Wanted::of(Some(request)).map_err(|e| Box::new(error(e)))?;
    let shape = time_range::shape_of(request).map_err(|detail| {
        tracing::debug!(%detail, "calendar-data shape refused");
        Box::new(precondition(StatusCode::FORBIDDEN, CALDAV, "valid-filter"))
    })?;
    Ok((wanted, shape))
}

async fn query(state: &Shared, auth: DeviceAuth, c: &Collection, request: &Element) -> Response {
    let (wanted, shape) = match asked(request) {
        Ok(a) => a,
        Err(refused) => return *refused,
    };
    // An address book query's filters, anyof unless the filter says allof.
    let card_filter = request.child(CARDDAV, "filter");
    let card_all = card_filter.is_some_and(|f| f.attr("test") == Some("allof"));
    let kinds = match c.holds {
        Holds::Contacts => vec![KindFilter {
            kind: Kind::Contact,
            range: None,
            props: card_filter
                .map(|f| prop_filters(f, CARDDAV))
                .transpose()
                .unwrap_or_default()
                .unwrap_or_default(),
            alarm: None,
        }],
        Holds::Calendar => match filtered_kinds(request) {
            Ok(k) => k,
            Err(detail) => {
                tracing::debug!(%detail, "calendar-query refused");
                return precondition(StatusCode::FORBIDDEN, CALDAV, "valid-filter");
            }
        },
    };
    let limit = match limit(request, wanted.wants_data()) {
        Ok(l) => l,
        Err(e) => return error(e),
    };
    let (rows, _) = match super::props::rows(state, auth.user, c).await {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    let with_data = wanted.wants_data();
    let mut out = String::from(xml::MULTISTATUS_OPEN);
    // An item of a kind asked for, in its time range and passing its property filters when the
    // query gives them (its text, which they read, is exported only then; an item whose text
    // cannot be written is answered: a superset).
    let matching = rows.iter().filter(|r| {
        kinds.iter().any(|f| {
            if f.kind != r.kind {
                return false;
            }
            if f.range.is_none() && f.props.is_empty() && f.alarm.is_none() {
                return true;
            }
            let Some(text) = r
                .document
                .as_ref()
                .and_then(|d| super::row::text(c, r.kind, d))
            else {
                return true;
            };
            let in_range = f
                .range
                .is_none_or(|range| time_range::overlaps(&text, range));
            let comp = component_of(r.kind);
            let alarmed = match f.alarm {
                None => true,
                Some(AlarmTest::Fires(range)) => {
                    keepsake_formats::instances::alarm_fires(&text, comp, range.start, range.end)
                }
                Some(AlarmTest::Defined) => keepsake_formats::instances::has_alarm(&text, comp),
                Some(AlarmTest::NotDefined) => {
                    keepsake_formats::instances::lacks_alarm(&text, comp)
                }
            };
            in_range
                && alarmed
                && match c.holds {
                    Holds::Contacts => filters::card_matches(&text, &f.props, card_all),
                    Holds::Calendar => {
                        filters::calendar_matches(&text, component_of(r.kind), &f.props)
                    }
                }
        })
    });
    for (answered, row) in matching.enumerate() {
        if limit.is_some_and(|l| answered >= l) {
            out.push_str(&format!(
                "<d:response><d:href>{}</d:href><d:status>HTTP/1.1 507 Insufficient Storage</d:status><d:error><d:number-of-matches-within-limits/></d:error></d:response>",
                xml::escape(&c.href(auth.user))
            ));
            break;
        }
        item_props(row, c, with_data, shape).write(&mut out, &row.href(auth.user, c), &wanted);
    }
    out.push_str(xml::MULTISTATUS_CLOSE);
    multistatus(out)
}
