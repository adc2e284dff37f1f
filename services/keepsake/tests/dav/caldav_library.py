"""CalDAV through the `caldav` library (PyPI), a client no one here wrote: discovery from the
server root, the calendar's components, events and tasks saved and read back, a search by
UID, sync by token (RFC 6578) across an edit and a delete, and a change made by another client
seen in the next sync. Run by the e2e test `dav_clients` with KEEPSAKE_URL and KEEPSAKE_TOKEN.
Exits non-zero, saying what differs, on any failure.
"""

import os
import sys

import caldav

BASE = os.environ["KEEPSAKE_URL"].rstrip("/")
TOKEN = os.environ["KEEPSAKE_TOKEN"]

EVENT = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//caldav library test//EN
BEGIN:VEVENT
UID:review-1@example.org
DTSTAMP:20261101T090000Z
DTSTART:20261203T140000Z
DTEND:20261203T150000Z
SUMMARY:Design review
END:VEVENT
END:VCALENDAR
"""
TODO = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//caldav library test//EN
BEGIN:VTODO
UID:slides-1@example.org
DTSTAMP:20261101T090000Z
SUMMARY:Write the slides
END:VTODO
END:VCALENDAR
"""


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def urls(objects):
    return sorted(str(o.url) for o in objects)


def main():
    client = caldav.DAVClient(url=BASE + "/", username="laptop", password=TOKEN)
    principal = client.principal()
    calendars = principal.calendars()
    if len(calendars) != 1:
        fail(f"expected one calendar, found {calendars}")
    calendar = calendars[0]
    components = set(calendar.get_supported_components())
    if not {"VEVENT", "VTODO", "VJOURNAL"} <= components:
        fail(f"supported components: {components}")

    event = calendar.save_event(EVENT)
    todo = calendar.save_todo(TODO)
    if len(calendar.events()) != 1 or len(calendar.todos()) != 1:
        fail(f"events {calendar.events()}, todos {calendar.todos()}")
    found = calendar.event_by_uid("review-1@example.org")
    if "Design review" not in found.data:
        fail(f"event_by_uid gave {found.data!r}")

    # Sync by token: the first sync has both; after an edit and a delete, the next sync has
    # the edited event and reports the task gone.
    synced = calendar.objects_by_sync_token(load_objects=True)
    if len(list(synced)) != 2:
        fail(f"initial sync: {urls(synced)}")
    found.data = found.data.replace("SUMMARY:Design review", "SUMMARY:Design review (moved)")
    found.save()
    todo.delete()
    updated, deleted = synced.sync()
    if [str(o.url) for o in updated] != [str(event.url)]:
        fail(f"updated after the edit: {urls(updated)} (want {event.url})")
    if [str(o.url) for o in deleted] != [str(todo.url)]:
        fail(f"deleted after the delete: {urls(deleted)} (want {todo.url})")
    again = calendar.event_by_uid("review-1@example.org")
    if "Design review (moved)" not in again.data:
        fail(f"the edit did not stick: {again.data!r}")

    # Another client (a second connection) adds an event; this client's next sync has it.
    other = caldav.DAVClient(url=BASE + "/", username="other", password=TOKEN)
    other.principal().calendars()[0].save_event(EVENT.replace("review-1", "lunch-1").replace("Design review", "Lunch"))
    updated, deleted = synced.sync()
    if len(updated) != 1 or deleted:
        fail(f"after another client's event: updated {urls(updated)}, deleted {urls(deleted)}")
    if len(calendar.events()) != 2:
        fail(f"events at the end: {urls(calendar.events())}")
    # Found by UID among two events (a calendar-query with a UID text-match).
    if "Lunch" not in calendar.event_by_uid("lunch-1@example.org").data:
        fail("event_by_uid found the wrong event for lunch-1")
    if "Design review (moved)" not in calendar.event_by_uid("review-1@example.org").data:
        fail("event_by_uid found the wrong event for review-1")
    print("ok: caldav discovery, save, search, sync by token, edit, delete")


if __name__ == "__main__":
    main()
