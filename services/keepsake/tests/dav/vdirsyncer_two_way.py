"""Two-way sync of a local vdir with Keepsake through vdirsyncer, a CardDAV/CalDAV client no
one here wrote (PyPI; `make test` installs it). Run by the e2e test `dav_clients`, which starts
the server and registers the device; this script drives vdirsyncer and checks both sides.

Environment: KEEPSAKE_URL (the server), KEEPSAKE_TOKEN (a device token, used as the app
password), KEEPSAKE_WORK (an empty directory for the vdirs, vdirsyncer's status and config).
Exits non-zero, saying what differs, on any failure.
"""

import base64
import os
import pathlib
import subprocess
import sys
import urllib.error
import urllib.request

BASE = os.environ["KEEPSAKE_URL"].rstrip("/")
TOKEN = os.environ["KEEPSAKE_TOKEN"]
WORK = pathlib.Path(os.environ["KEEPSAKE_WORK"])
AUTH = "Basic " + base64.b64encode(f"phone:{TOKEN}".encode()).decode()

ADA = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:ada-1815\r\nFN:Ada Lovelace\r\nN:Lovelace;Ada;;;\r\nEND:VCARD\r\n"
ADA_2 = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:ada-1815\r\nFN:Ada King\r\nN:King;Ada;;;\r\nEND:VCARD\r\n"
GRACE = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:grace-1906\r\nFN:Grace Hopper\r\nEND:VCARD\r\n"
STANDUP = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//vdir test//EN\r\nBEGIN:VEVENT\r\n"
    "UID:standup-1\r\nDTSTAMP:20261101T090000Z\r\nDTSTART:20261102T090000Z\r\n"
    "DURATION:PT15M\r\nSUMMARY:Standup\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)
TODO = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//vdir test//EN\r\nBEGIN:VTODO\r\n"
    "UID:passport-1\r\nDTSTAMP:20261101T090000Z\r\nSUMMARY:Renew passport\r\nEND:VTODO\r\n"
    "END:VCALENDAR\r\n"
)


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def vdirsyncer(*args):
    cmd = ["vdirsyncer", "-c", str(WORK / "config"), *args]
    run = subprocess.run(cmd, input="y\n" * 20, capture_output=True, text=True, timeout=120)
    print(f"$ vdirsyncer {' '.join(args)}\n{run.stdout}{run.stderr}")
    if run.returncode != 0:
        fail(f"vdirsyncer {' '.join(args)} exited {run.returncode}")
    return run.stdout + run.stderr


def dav(method, path, body=None, headers=None):
    req = urllib.request.Request(BASE + path, data=body.encode() if body else None, method=method)
    req.add_header("Authorization", AUTH)
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def unfold(text):
    return text.replace("\r\n", "\n").replace("\n ", "").strip()


def local_items(directory):
    return {p.name: p.read_text() for p in sorted(directory.glob("*")) if p.is_file()}


def main():
    contacts = WORK / "contacts"
    calendars = WORK / "calendars"
    (WORK / "config").write_text(
        f"""
[general]
status_path = "{WORK / 'status'}"

[pair contacts]
a = "local_contacts"
b = "keepsake_contacts"
collections = ["from b"]

[storage local_contacts]
type = "filesystem"
path = "{contacts}"
fileext = ".vcf"

[storage keepsake_contacts]
type = "carddav"
url = "{BASE}/"
username = "phone"
password = "{TOKEN}"

[pair calendars]
a = "local_calendars"
b = "keepsake_calendars"
collections = ["from b"]

[storage local_calendars]
type = "filesystem"
path = "{calendars}"
fileext = ".ics"

[storage keepsake_calendars]
type = "caldav"
url = "{BASE}/"
username = "phone"
password = "{TOKEN}"
"""
    )
    # Discovery from the server's root (RFC 6764 / current-user-principal / home sets).
    vdirsyncer("discover", "contacts")
    vdirsyncer("discover", "calendars")
    book = contacts / "contacts"
    calendar = calendars / "calendar"
    if not book.is_dir() or not calendar.is_dir():
        fail(f"discovery did not find the address book and the calendar: {list(WORK.rglob('*'))}")

    # Local -> server.
    (book / "ada.vcf").write_text(ADA, newline="")
    (calendar / "standup.ics").write_text(STANDUP, newline="")
    (calendar / "passport.ics").write_text(TODO, newline="")
    vdirsyncer("sync")
    # The items are on the server, readable by their hrefs, with the client's text.
    found = {}
    for collection in ("contacts", "calendar"):
        _, body = dav(
            "REPORT",
            f"{home()}{collection}/",
            '<d:sync-collection xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav" '
            'xmlns:cal="urn:ietf:params:xml:ns:caldav"><d:sync-token/><d:sync-level>1</d:sync-level>'
            "<d:prop><d:getetag/></d:prop></d:sync-collection>",
        )
        found[collection] = sorted(
            part.split("</d:href>")[0] for part in body.split("<d:href>")[1:] if part.split("</d:href>")[0] != f"{home()}{collection}/"
        )
    if len(found["contacts"]) != 1 or len(found["calendar"]) != 2:
        fail(f"the server holds {found} after the first sync")
    code, text = dav("GET", found["contacts"][0])
    if code != 200 or unfold(text) != unfold(ADA):
        fail(f"GET {found['contacts'][0]}: {code} {text!r}")

    # Server -> local: a contact written by another client; and an edit made locally.
    code, _ = dav("PUT", f"{home()}contacts/grace.vcf", GRACE, {"Content-Type": "text/vcard", "If-None-Match": "*"})
    if code != 201:
        fail(f"PUT grace.vcf: {code}")
    (book / "ada.vcf").write_text(ADA_2, newline="")
    vdirsyncer("sync")
    local = local_items(book)
    if not any(unfold(t) == unfold(GRACE) for t in local.values()):
        fail(f"the contact written on the server did not reach the vdir: {local}")
    code, text = dav("GET", found["contacts"][0])
    if code != 200 or unfold(text) != unfold(ADA_2):
        fail(f"the local edit did not reach the server: {code} {text!r}")

    # A local delete reaches the server; the next sync has nothing to do.
    (calendar / "passport.ics").unlink()
    vdirsyncer("sync")
    code, _ = dav("GET", [h for h in found["calendar"] if "passport" in h][0])
    if code != 404:
        fail(f"the deleted task is still on the server: {code}")
    quiet = vdirsyncer("sync")
    for verb in ("Copying", "Updating", "Deleting"):
        if verb in quiet:
            fail(f"a sync after a sync still changed something: {quiet}")
    print("ok: discovery, two-way sync of contacts and calendar items, edits and deletes")


def home():
    code, body = dav(
        "PROPFIND",
        "/dav/",
        '<d:propfind xmlns:d="DAV:"><d:prop><d:current-user-principal/></d:prop></d:propfind>',
        {"Depth": "0"},
    )
    if code != 207 or "<d:current-user-principal><d:href>" not in body:
        fail(f"PROPFIND /dav/: {code} {body}")
    return body.split("<d:current-user-principal><d:href>")[1].split("</d:href>")[0]


if __name__ == "__main__":
    main()
