// CardDAV and CalDAV through tsdav (npm), a client no one here wrote: discovery, the address
// book and the calendar, create / update / delete of a vCard and an event, fetch and
// multiget, and sync-collection before and after the changes. Run by the e2e test
// `dav_clients` with KEEPSAKE_URL and KEEPSAKE_TOKEN; NODE_PATH holds tsdav (make dav-clients).
// Exits non-zero, saying what differs, on any failure.
'use strict';
const { DAVClient } = require('tsdav');

const BASE = process.env.KEEPSAKE_URL.replace(/\/$/, '');
const TOKEN = process.env.KEEPSAKE_TOKEN;

function fail(message) {
  console.error(`FAIL: ${message}`);
  process.exit(1);
}

const ADA = 'BEGIN:VCARD\r\nVERSION:3.0\r\nUID:ada-tsdav\r\nFN:Ada Lovelace\r\nN:Lovelace;Ada;;;\r\nEND:VCARD\r\n';
const ADA_2 = ADA.replace('Ada Lovelace', 'Ada King').replace('Lovelace;Ada', 'King;Ada');
const EVENT = 'BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//tsdav test//EN\r\nBEGIN:VEVENT\r\n' +
  'UID:tsdav-event-1\r\nDTSTAMP:20261101T090000Z\r\nDTSTART:20261204T100000Z\r\n' +
  'DURATION:PT30M\r\nSUMMARY:Planning\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n';

async function client(accountType) {
  const c = new DAVClient({
    serverUrl: `${BASE}/`,
    credentials: { username: 'tsdav', password: TOKEN },
    authMethod: 'Basic',
    defaultAccountType: accountType,
  });
  await c.login();
  return c;
}

async function syncHrefs(c, url, token) {
  const responses = await c.syncCollection({
    url,
    props: { 'd:getetag': {} },
    syncLevel: 1,
    syncToken: token,
  });
  return responses;
}

async function main() {
  // CardDAV.
  const card = await client('carddav');
  const books = await card.fetchAddressBooks();
  if (books.length !== 1) fail(`address books: ${JSON.stringify(books.map((b) => b.url))}`);
  const book = books[0];
  const created = await card.createVCard({ addressBook: book, filename: 'ada-tsdav.vcf', vCardString: ADA });
  if (!created.ok) fail(`createVCard: ${created.status}`);
  let cards = await card.fetchVCards({ addressBook: book });
  if (cards.length !== 1 || !cards[0].data.includes('FN:Ada Lovelace')) fail(`fetchVCards: ${JSON.stringify(cards)}`);
  const first = await syncHrefs(card, book.url, '');
  if (first.length !== 1) fail(`initial sync: ${JSON.stringify(first)}`);
  const updated = await card.updateVCard({ vCard: { url: cards[0].url, data: ADA_2, etag: cards[0].etag } });
  if (!updated.ok) fail(`updateVCard: ${updated.status}`);
  // A stale ETag is refused.
  const stale = await card.updateVCard({ vCard: { url: cards[0].url, data: ADA, etag: cards[0].etag } });
  if (stale.status !== 412) fail(`a stale update answered ${stale.status}, not 412`);
  cards = await card.fetchVCards({ addressBook: book, objectUrls: [cards[0].url] });
  if (cards.length !== 1 || !cards[0].data.includes('FN:Ada King')) fail(`multiget after update: ${JSON.stringify(cards)}`);
  const refreshed = await card.fetchAddressBooks();
  const token = refreshed[0].syncToken;
  if (!token) fail('the address book has no sync-token');
  const deleted = await card.deleteVCard({ vCard: cards[0] });
  if (!deleted.ok) fail(`deleteVCard: ${deleted.status}`);
  const after = await syncHrefs(card, book.url, token);
  if (after.length !== 1 || after[0].status !== 404) fail(`sync after delete: ${JSON.stringify(after)}`);

  // CalDAV.
  const cal = await client('caldav');
  const calendars = await cal.fetchCalendars();
  if (calendars.length !== 1) fail(`calendars: ${JSON.stringify(calendars.map((c) => c.url))}`);
  const calendar = calendars[0];
  if (!(calendar.components || []).includes('VEVENT')) fail(`components: ${calendar.components}`);
  const made = await cal.createCalendarObject({ calendar, filename: 'planning.ics', iCalString: EVENT });
  if (!made.ok) fail(`createCalendarObject: ${made.status}`);
  const objects = await cal.fetchCalendarObjects({
    calendar,
    timeRange: { start: '2026-12-01T00:00:00Z', end: '2026-12-31T00:00:00Z' },
  });
  if (objects.length !== 1 || !objects[0].data.includes('SUMMARY:Planning')) fail(`fetchCalendarObjects: ${JSON.stringify(objects)}`);
  const none = await cal.fetchCalendarObjects({
    calendar,
    timeRange: { start: '2027-01-01T00:00:00Z', end: '2027-02-01T00:00:00Z' },
  });
  if (none.length !== 0) fail(`a range without the event: ${JSON.stringify(none)}`);
  const gone = await cal.deleteCalendarObject({ calendarObject: objects[0] });
  if (!gone.ok) fail(`deleteCalendarObject: ${gone.status}`);
  const left = await cal.fetchCalendarObjects({ calendar });
  if (left.length !== 0) fail(`objects after delete: ${JSON.stringify(left)}`);
  console.log('ok: tsdav discovery, vCard and event create/update/delete, multiget, time range, sync');
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
