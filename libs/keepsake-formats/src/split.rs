//! Splitting a `.vcf` or `.ics` text into entries, lazily, one line at a time.
//!
//! An *entry* is what becomes one item: one `BEGIN:VCARD ... END:VCARD` of a vCard text; or,
//! of an iCalendar text, one VEVENT, VTODO or VJOURNAL together with the components next to it
//! that carry the same UID (its exceptions, `RECURRENCE-ID`), wrapped in a VCALENDAR made of
//! the original lines: the calendar's own `BEGIN:VCALENDAR` line and properties, the
//! VTIMEZONEs its `TZID` parameters name, the components, and `END:VCALENDAR`. A calendar with
//! one item therefore gives back exactly its own text.
//!
//! Invariants:
//! - Lines are read in order and each once; no tree of the whole text is built. Memory held
//!   between entries: the current calendar's property lines and VTIMEZONEs (as byte ranges,
//!   capped by [`Limits::max_entry_bytes`]), and the UIDs already seen in it (to refuse an
//!   item split around other items rather than import it as two).
//! - Every entry is either `Ok` with its text, or an [`EntryError`] naming the 1-based line
//!   where it starts; a bad entry never hides a good one before or after it.
//! - Lines end in CRLF or LF; a line starting with a space or a tab continues the one before
//!   (RFC 6350 3.2, RFC 5545 3.1). `line` numbers count physical lines.
//! - A physical line over [`Limits::max_line_bytes`], or an entry over
//!   [`Limits::max_entry_bytes`], makes its entry an error; the text after it is still read.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use keepsake_model::Kind;

use crate::Format;
use crate::error::{EntryError, EntryErrorReason};

/// Components that only a VCALENDAR holds (RFC 5545 3.6, RFC 7953): a BEGIN of one of them
/// inside an open component means that component lacks its END.
const TOP_LEVEL: &[&str] = &[
    "VCALENDAR",
    "VEVENT",
    "VTODO",
    "VJOURNAL",
    "VFREEBUSY",
    "VTIMEZONE",
    "VAVAILABILITY",
];

/// Size limits of the splitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest physical line, in bytes without its line end.
    pub max_line_bytes: usize,
    /// Longest entry, in bytes of its text (for a calendar entry: the composed VCALENDAR).
    pub max_entry_bytes: usize,
}

impl Default for Limits {
    /// 256 KiB lines, 1 MiB entries: room for an unfolded photo, and above the server's
    /// default document limit (256 KiB), which refuses larger items at staging anyway.
    fn default() -> Self {
        Self {
            max_line_bytes: 256 * 1024,
            max_entry_bytes: 1024 * 1024,
        }
    }
}

/// One entry of a text: what becomes one item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The format it was read from.
    pub format: Format,
    /// The kind it becomes: `contact` for a vCard; `event`, `task`, `note` for VEVENT, VTODO,
    /// VJOURNAL.
    pub kind: Kind,
    /// 1-based line of its `BEGIN:VCARD` (or of its first `BEGIN:VEVENT`/`VTODO`/`VJOURNAL`).
    pub line: usize,
    /// Its `UID`, unfolded and trimmed; `None` when it has none.
    pub uid: Option<String>,
    /// Its original text (a calendar entry: the VCALENDAR composed of original lines).
    pub text: Cow<'a, str>,
}

/// The entries of `text`, read lazily with the default [`Limits`].
pub fn entries(text: &str, format: Format) -> Entries<'_> {
    entries_with_limits(text, format, Limits::default())
}

/// The entries of `text`, read lazily with the given limits.
pub fn entries_with_limits(text: &str, format: Format, limits: Limits) -> Entries<'_> {
    Entries {
        lines: Logical::new(text, limits.max_line_bytes),
        text,
        format,
        limits,
        state: State::Outside,
        stray: None,
        out: VecDeque::new(),
        done: false,
    }
}

/// The text of `bytes` if it is UTF-8; otherwise the 1-based line of the first invalid byte.
pub fn utf8_text(bytes: &[u8]) -> Result<&str, usize> {
    std::str::from_utf8(bytes).map_err(|e| {
        let valid = bytes.get(..e.valid_up_to()).unwrap_or_default();
        1 + valid.iter().filter(|b| **b == b'\n').count()
    })
}

/// The iterator returned by [`entries`].
#[derive(Debug)]
pub struct Entries<'a> {
    lines: Logical<'a>,
    text: &'a str,
    format: Format,
    limits: Limits,
    state: State,
    /// A run of stray lines: (first line, count).
    stray: Option<(usize, usize)>,
    out: VecDeque<Result<Entry<'a>, EntryError>>,
    done: bool,
}

#[derive(Debug)]
enum State {
    Outside,
    Card(Open),
    Calendar(Box<Calendar>),
}

/// An open component: a vCard, or a calendar component with its nested ones.
#[derive(Debug)]
struct Open {
    line: usize,
    start: usize,
    /// Names of the open components, outermost first (upper case).
    stack: Vec<String>,
    uid: Option<String>,
    tzids: Vec<String>,
    error: Option<EntryErrorReason>,
}

/// Same-UID components waiting for their neighbours.
#[derive(Debug)]
struct Group {
    kind: Kind,
    line: usize,
    uid: Option<String>,
    parts: Vec<(usize, usize)>,
    tzids: Vec<String>,
    error: Option<EntryErrorReason>,
}

#[derive(Debug)]
struct Calendar {
    line: usize,
    begin: (usize, usize),
    newline: &'static str,
    props: Vec<(usize, usize)>,
    props_bytes: usize,
    tzs: Vec<(String, (usize, usize))>,
    tz_bytes: usize,
    current: Option<Open>,
    pending: Option<Group>,
    seen: HashMap<String, usize>,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, EntryError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.out.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            match self.lines.next() {
                Some(line) => self.step(line),
                None => self.finish(),
            }
        }
    }
}

impl<'a> Entries<'a> {
    fn err(&mut self, line: usize, uid: Option<String>, reason: EntryErrorReason) {
        self.out.push_back(Err(EntryError { line, uid, reason }));
    }

    fn flush_stray(&mut self) {
        if let Some((line, count)) = self.stray.take() {
            let expected = match self.format {
                Format::VCard => "VCARD",
                Format::ICalendar => "VCALENDAR",
            };
            self.err(line, None, EntryErrorReason::Stray { count, expected });
        }
    }

    fn finish(&mut self) {
        self.done = true;
        match std::mem::replace(&mut self.state, State::Outside) {
            State::Outside => {}
            State::Card(open) => {
                let expected = open.stack.last().cloned().unwrap_or_default();
                self.err(
                    open.line,
                    open.uid,
                    EntryErrorReason::Unterminated { expected },
                );
            }
            State::Calendar(mut cal) => {
                if let Some(open) = cal.current.take() {
                    self.component_unterminated(&mut cal, open);
                }
                self.flush_pending(&mut cal);
                self.err(
                    cal.line,
                    None,
                    EntryErrorReason::Unterminated {
                        expected: "VCALENDAR".into(),
                    },
                );
            }
        }
        self.flush_stray();
    }

    fn step(&mut self, line: Line<'a>) {
        match std::mem::replace(&mut self.state, State::Outside) {
            State::Outside => self.step_outside(line),
            State::Card(open) => self.step_card(open, line),
            State::Calendar(cal) => self.step_calendar(cal, line),
        }
    }

    fn step_outside(&mut self, line: Line<'a>) {
        if line.is_blank() && line.too_long.is_none() {
            return;
        }
        let begin = line.begin();
        match (self.format, begin.as_deref()) {
            (Format::VCard, Some("VCARD")) => {
                self.flush_stray();
                self.state = State::Card(Open::new(&line, "VCARD"));
            }
            (Format::ICalendar, Some("VCALENDAR")) => {
                self.flush_stray();
                self.state = State::Calendar(Box::new(Calendar {
                    line: line.no,
                    begin: (line.start, line.end),
                    newline: if line.raw(self.text).ends_with("\r\n") {
                        "\r\n"
                    } else if line.raw(self.text).ends_with('\n') {
                        "\n"
                    } else {
                        "\r\n"
                    },
                    props: Vec::new(),
                    props_bytes: 0,
                    tzs: Vec::new(),
                    tz_bytes: 0,
                    current: None,
                    pending: None,
                    seen: HashMap::new(),
                }));
            }
            _ => match &mut self.stray {
                Some((_, count)) => *count += 1,
                None => self.stray = Some((line.no, 1)),
            },
        }
    }

    fn step_card(&mut self, mut open: Open, line: Line<'a>) {
        open.check(&line, self.limits);
        if line.begin().as_deref() == Some("VCARD") {
            let reason = EntryErrorReason::Misnested {
                line: line.no,
                expected: "VCARD".into(),
                found: "BEGIN:VCARD".into(),
            };
            self.err(open.line, open.uid, reason);
            self.state = State::Card(Open::new(&line, "VCARD"));
            return;
        }
        if let Some(end) = line.end_of() {
            if end == "VCARD" {
                match open.error {
                    Some(reason) => self.err(open.line, open.uid, reason),
                    None => {
                        let text = self.text.get(open.start..line.end).unwrap_or_default();
                        self.out.push_back(Ok(Entry {
                            format: Format::VCard,
                            kind: Kind::Contact,
                            line: open.line,
                            uid: open.uid,
                            text: Cow::Borrowed(text),
                        }));
                    }
                }
                return;
            }
            if open.error.is_none() {
                open.error = Some(EntryErrorReason::Misnested {
                    line: line.no,
                    expected: "VCARD".into(),
                    found: format!("END:{end}"),
                });
            }
        } else if open.uid.is_none() && line.name_is("UID") {
            open.uid = line.value(self.text);
        }
        self.state = State::Card(open);
    }

    fn step_calendar(&mut self, mut cal: Box<Calendar>, line: Line<'a>) {
        if let Some(mut open) = cal.current.take() {
            open.check(&line, self.limits);
            if let Some(begin) = line.begin() {
                if TOP_LEVEL.contains(&begin.as_str()) {
                    // A component that only a calendar holds: the open one lacks its END,
                    // and is cut short here; the new one is read as usual.
                    let expected = open.stack.last().cloned().unwrap_or_default();
                    open.error.get_or_insert(EntryErrorReason::Misnested {
                        line: line.no,
                        expected,
                        found: format!("BEGIN:{begin}"),
                    });
                    self.component_done(&mut cal, open);
                    if begin == "VCALENDAR" {
                        self.flush_pending(&mut cal);
                        self.step_outside(line);
                    } else {
                        self.state = State::Calendar(cal);
                        self.step(line);
                    }
                    return;
                }
                open.stack.push(begin);
            } else if let Some(end) = line.end_of() {
                if open.stack.last() == Some(&end) {
                    open.stack.pop();
                } else if let Some(at) = open.stack.iter().rposition(|name| *name == end) {
                    let expected = open.stack.last().cloned().unwrap_or_default();
                    open.error.get_or_insert(EntryErrorReason::Misnested {
                        line: line.no,
                        expected,
                        found: format!("END:{end}"),
                    });
                    open.stack.truncate(at);
                } else if end == "VCALENDAR" {
                    self.component_unterminated(&mut cal, open);
                    self.flush_pending(&mut cal);
                    self.state = State::Outside;
                    return;
                } else {
                    let expected = open.stack.last().cloned().unwrap_or_default();
                    open.error.get_or_insert(EntryErrorReason::Misnested {
                        line: line.no,
                        expected,
                        found: format!("END:{end}"),
                    });
                }
                if open.stack.is_empty() {
                    self.component_closed(&mut cal, open, line.end);
                    self.state = State::Calendar(cal);
                    return;
                }
            } else {
                if open.stack.len() == 1 {
                    if open.uid.is_none() && line.name_is("UID") {
                        open.uid = line.value(self.text);
                    }
                    if open.stack.first().map(String::as_str) == Some("VTIMEZONE")
                        && line.name_is("TZID")
                    {
                        if let Some(tzid) = line.value(self.text) {
                            open.tzids.push(tzid);
                        }
                    }
                }
                if line.has_tzid_hint() {
                    for tzid in line.tzid_params(self.text) {
                        if !open.tzids.contains(&tzid) {
                            open.tzids.push(tzid);
                        }
                    }
                }
            }
            cal.current = Some(open);
            self.state = State::Calendar(cal);
            return;
        }
        // Calendar level.
        if let Some(begin) = line.begin() {
            if begin == "VCALENDAR" {
                self.flush_pending(&mut cal);
                self.err(
                    cal.line,
                    None,
                    EntryErrorReason::Misnested {
                        line: line.no,
                        expected: "VCALENDAR".into(),
                        found: "BEGIN:VCALENDAR".into(),
                    },
                );
                self.step_outside(line);
                return;
            }
            let mut open = Open::new(&line, &begin);
            open.check(&line, self.limits);
            cal.current = Some(open);
        } else if let Some(end) = line.end_of() {
            if end == "VCALENDAR" {
                self.flush_pending(&mut cal);
                self.state = State::Outside;
                return;
            }
            self.err(
                line.no,
                None,
                EntryErrorReason::Misnested {
                    line: line.no,
                    expected: "VCALENDAR".into(),
                    found: format!("END:{end}"),
                },
            );
        } else if let Some(too_long) = line.too_long {
            self.err(
                line.no,
                None,
                EntryErrorReason::LineTooLong {
                    line: too_long,
                    limit: self.limits.max_line_bytes,
                },
            );
        } else if !line.is_blank() {
            let len = line.end - line.start;
            if cal.props_bytes + len <= self.limits.max_entry_bytes {
                cal.props.push((line.start, line.end));
            }
            // Past the limit the properties are not kept, and every entry counts them: the
            // composed entries are too large and say so.
            cal.props_bytes += len;
        }
        self.state = State::Calendar(cal);
    }

    fn component_unterminated(&mut self, cal: &mut Calendar, mut open: Open) {
        let expected = open.stack.first().cloned().unwrap_or_default();
        open.error
            .get_or_insert(EntryErrorReason::Unterminated { expected });
        self.component_done(cal, open);
    }

    /// A component ended at byte `end`.
    fn component_closed(&mut self, cal: &mut Calendar, open: Open, end: usize) {
        let Open {
            line,
            start,
            uid,
            tzids,
            error,
            ..
        } = open;
        let name = self
            .text
            .get(start..end)
            .and_then(|t| t.split(['\r', '\n']).next())
            .and_then(|first| first.split_once(':'))
            .map(|(_, v)| v.trim().to_ascii_uppercase())
            .unwrap_or_default();
        if name == "VTIMEZONE" {
            if let Some(reason) = error {
                self.err(line, None, reason);
            } else if let Some(tzid) = tzids.first() {
                let len = end - start;
                if cal.tz_bytes + len <= self.limits.max_entry_bytes {
                    cal.tz_bytes += len;
                    cal.tzs.push((tzid.clone(), (start, end)));
                }
            }
            return;
        }
        let kind = match name.as_str() {
            "VEVENT" => Kind::Event,
            "VTODO" => Kind::Task,
            "VJOURNAL" => Kind::Note,
            _ => {
                self.err(
                    line,
                    uid,
                    error.unwrap_or(EntryErrorReason::UnsupportedComponent { component: name }),
                );
                return;
            }
        };
        if let Some(pending) = &mut cal.pending {
            if pending.uid.is_some() && pending.uid == uid && pending.kind == kind {
                pending.parts.push((start, end));
                for tzid in tzids {
                    if !pending.tzids.contains(&tzid) {
                        pending.tzids.push(tzid);
                    }
                }
                if pending.error.is_none() {
                    pending.error = error;
                }
                return;
            }
        }
        self.flush_pending(cal);
        if let Some(u) = &uid {
            if let Some(first_line) = cal.seen.get(u) {
                let reason = EntryErrorReason::SplitUid {
                    first_line: *first_line,
                };
                self.err(line, uid, error.unwrap_or(reason));
                return;
            }
            cal.seen.insert(u.clone(), line);
        }
        cal.pending = Some(Group {
            kind,
            line,
            uid,
            parts: vec![(start, end)],
            tzids,
            error,
        });
    }

    /// A component that ends in an error before its END line.
    fn component_done(&mut self, cal: &mut Calendar, open: Open) {
        let reason = open.error.unwrap_or(EntryErrorReason::Unterminated {
            expected: String::new(),
        });
        // The component's own error; the pending group (other UIDs) stays good and is
        // emitted first, keeping the order of the text.
        self.flush_pending(cal);
        self.err(open.line, open.uid, reason);
    }

    fn flush_pending(&mut self, cal: &mut Calendar) {
        let Some(group) = cal.pending.take() else {
            return;
        };
        if let Some(reason) = group.error {
            self.err(group.line, group.uid, reason);
            return;
        }
        let text = self.text;
        let slice = |(a, b): (usize, usize)| text.get(a..b).unwrap_or_default();
        let tzs: Vec<&str> = cal
            .tzs
            .iter()
            .filter(|(tzid, _)| group.tzids.contains(tzid))
            .map(|(_, range)| slice(*range))
            .collect();
        let size = slice(cal.begin).len()
            + cal.props_bytes
            + tzs.iter().map(|t| t.len()).sum::<usize>()
            + group.parts.iter().map(|p| p.1 - p.0).sum::<usize>()
            + "END:VCALENDAR".len()
            + cal.newline.len();
        if size > self.limits.max_entry_bytes {
            let limit = self.limits.max_entry_bytes;
            self.err(
                group.line,
                group.uid,
                EntryErrorReason::EntryTooLarge { limit },
            );
            return;
        }
        let mut out = String::with_capacity(size);
        out.push_str(slice(cal.begin));
        for p in &cal.props {
            out.push_str(slice(*p));
        }
        for tz in tzs {
            out.push_str(tz);
        }
        for p in &group.parts {
            let part = slice(*p);
            out.push_str(part);
            if !part.ends_with('\n') {
                out.push_str(cal.newline);
            }
        }
        out.push_str("END:VCALENDAR");
        out.push_str(cal.newline);
        self.out.push_back(Ok(Entry {
            format: Format::ICalendar,
            kind: group.kind,
            line: group.line,
            uid: group.uid,
            text: Cow::Owned(out),
        }));
    }
}

impl Open {
    fn new(line: &Line<'_>, name: &str) -> Self {
        Open {
            line: line.no,
            start: line.start,
            stack: vec![name.to_string()],
            uid: None,
            tzids: Vec::new(),
            error: None,
        }
    }

    fn check(&mut self, line: &Line<'_>, limits: Limits) {
        if self.error.is_some() {
            return;
        }
        if let Some(no) = line.too_long {
            self.error = Some(EntryErrorReason::LineTooLong {
                line: no,
                limit: limits.max_line_bytes,
            });
        } else if line.end - self.start > limits.max_entry_bytes {
            self.error = Some(EntryErrorReason::EntryTooLarge {
                limit: limits.max_entry_bytes,
            });
        }
    }
}

/// One logical (unfolded) line: its physical lines are `text[start..end]`, line ends included.
#[derive(Debug)]
struct Line<'a> {
    /// 1-based number of its first physical line.
    no: usize,
    start: usize,
    end: usize,
    /// Its first physical line without the line end (and without a leading byte-order mark).
    first: &'a str,
    /// More than one physical line.
    folded: bool,
    /// The first physical line of it over the limit.
    too_long: Option<usize>,
}

impl<'a> Line<'a> {
    fn raw(&self, text: &'a str) -> &'a str {
        text.get(self.start..self.end).unwrap_or_default()
    }

    fn is_blank(&self) -> bool {
        !self.folded && self.first.trim().is_empty()
    }

    /// The property name, without a group prefix (`item1.`), as written.
    fn name(&self) -> &'a str {
        let end = self.first.find([':', ';']).unwrap_or(self.first.len());
        let name = self.first.get(..end).unwrap_or_default().trim();
        name.rsplit('.').next().unwrap_or(name)
    }

    fn name_is(&self, name: &str) -> bool {
        self.name().eq_ignore_ascii_case(name)
    }

    fn simple_value(&self) -> Option<String> {
        let (_, value) = self.first.split_once(':')?;
        Some(value.trim().to_ascii_uppercase())
    }

    /// The component a `BEGIN:` line opens, upper case.
    fn begin(&self) -> Option<String> {
        if self.folded || self.too_long.is_some() || !self.name_is("BEGIN") {
            return None;
        }
        self.simple_value()
    }

    /// The component an `END:` line closes, upper case.
    fn end_of(&self) -> Option<String> {
        if self.folded || self.too_long.is_some() || !self.name_is("END") {
            return None;
        }
        self.simple_value()
    }

    /// The unfolded text of the line.
    fn unfolded(&self, text: &'a str) -> Cow<'a, str> {
        if !self.folded {
            return Cow::Borrowed(self.first);
        }
        let mut out = String::with_capacity(self.end - self.start);
        for (i, piece) in self.raw(text).split('\n').enumerate() {
            let piece = piece.strip_suffix('\r').unwrap_or(piece);
            if i == 0 {
                out.push_str(piece);
            } else {
                let mut chars = piece.chars();
                chars.next();
                out.push_str(chars.as_str());
            }
        }
        Cow::Owned(out)
    }

    /// The value after the first `:` outside quotes, unfolded and trimmed; `None` if empty.
    fn value(&self, text: &'a str) -> Option<String> {
        let line = self.unfolded(text);
        let at = value_start(&line)?;
        let value = line.get(at..)?.trim();
        (!value.is_empty()).then(|| value.to_string())
    }

    fn has_tzid_hint(&self) -> bool {
        self.folded || self.first.to_ascii_uppercase().contains("TZID=")
    }

    /// The values of `TZID=` parameters, unquoted.
    fn tzid_params(&self, text: &'a str) -> Vec<String> {
        let line = self.unfolded(text);
        let params_end = value_start(&line).map_or(line.len(), |at| at.saturating_sub(1));
        let params = line.get(..params_end).unwrap_or_default();
        let mut out = Vec::new();
        for param in split_unquoted(params, ';').into_iter().skip(1) {
            if let Some((name, value)) = param.split_once('=') {
                if name.trim().eq_ignore_ascii_case("TZID") {
                    let value = value.trim();
                    let value = value
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(value);
                    out.push(value.to_string());
                }
            }
        }
        out
    }
}

/// Byte offset just after the first `:` outside double quotes.
fn value_start(line: &str) -> Option<usize> {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ':' if !quoted => return Some(i + 1),
            _ => {}
        }
    }
    None
}

fn split_unquoted(text: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut from = 0;
    for (i, c) in text.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(text.get(from..i).unwrap_or_default());
            from = i + c.len_utf8();
        }
    }
    out.push(text.get(from..).unwrap_or_default());
    out
}

/// Physical lines joined into logical ones.
#[derive(Debug)]
struct Logical<'a> {
    text: &'a str,
    pos: usize,
    no: usize,
    max_line: usize,
}

impl<'a> Logical<'a> {
    fn new(text: &'a str, max_line: usize) -> Self {
        Self {
            text,
            pos: 0,
            no: 0,
            max_line,
        }
    }

    /// The next physical line: (number, start, end with line end, content).
    fn physical(&mut self) -> Option<(usize, usize, usize, &'a str)> {
        let rest = self.text.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let start = self.pos;
        let (content, len) = match rest.find('\n') {
            Some(i) => (rest.get(..i).unwrap_or_default(), i + 1),
            None => (rest, rest.len()),
        };
        self.pos += len;
        self.no += 1;
        let content = content.strip_suffix('\r').unwrap_or(content);
        Some((self.no, start, start + len, content))
    }

    fn peek_is_continuation(&self) -> bool {
        self.text
            .get(self.pos..)
            .is_some_and(|rest| rest.starts_with([' ', '\t']))
    }
}

impl<'a> Iterator for Logical<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        let (no, start, mut end, content) = self.physical()?;
        let mut too_long = (content.len() > self.max_line).then_some(no);
        let first = if no == 1 {
            content.strip_prefix('\u{feff}').unwrap_or(content)
        } else {
            content
        };
        let mut folded = false;
        while self.peek_is_continuation() {
            let Some((n, _, e, c)) = self.physical() else {
                break;
            };
            folded = true;
            end = e;
            if too_long.is_none() && c.len() > self.max_line {
                too_long = Some(n);
            }
        }
        Some(Line {
            no,
            start,
            end,
            first,
            folded,
            too_long,
        })
    }
}
