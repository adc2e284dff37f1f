"""vdirsyncer's own storage test suite, pointed at a running Keepsake server.

The e2e test `vdirsyncer_s_own_storage_suite_passes` (dav_clients.rs) installs this file as
tests/storage/servers/keepsake/__init__.py inside the vdirsyncer 0.21.0 sdist that
`make dav-clients` unpacks, and runs pytest on tests/storage/dav with DAV_SERVER=keepsake.

Environment:
  KEEPSAKE_DAV_URL    base URL handed to vdirsyncer, e.g. http://127.0.0.1:8080/
                      (server root: vdirsyncer discovers principal + home set
                      itself) or the principal/home URL
                      http://127.0.0.1:8080/dav/users/<user>/ (skips the
                      current-user-principal step).
  KEEPSAKE_DAV_USER   Basic-auth user name (must be non-empty: vdirsyncer only
                      sends auth when both user and password are set).
  KEEPSAKE_DAV_TOKEN  Basic-auth password (device token).

Mirrors tests/storage/servers/radicale/__init__.py of 0.21.0: every test gets
a fresh collection created through vdirsyncer's own
``Storage.create_collection`` (PROPFIND discovery + extended MKCOL, RFC 5689)
via the ``slow_create_collection`` fixture, which DELETEs it after the test.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import pytest_asyncio


def _keepsake_env() -> dict:
    missing = [
        k
        for k in ("KEEPSAKE_DAV_URL", "KEEPSAKE_DAV_USER", "KEEPSAKE_DAV_TOKEN")
        if not os.environ.get(k, "").strip()
    ]
    if missing:
        pytest.fail(
            f"DAV_SERVER=keepsake needs these environment variables: {missing}",
            pytrace=False,
        )
    url = os.environ["KEEPSAKE_DAV_URL"].strip()
    # vdirsyncer's DAVSession always uses url.rstrip("/") + "/"; keep the args
    # identical so tests that mock args["url"] (test_invalid_resource) match.
    url = url.rstrip("/") + "/"
    return {
        "url": url,
        "username": os.environ["KEEPSAKE_DAV_USER"].strip(),
        "password": os.environ["KEEPSAKE_DAV_TOKEN"].strip(),
    }


class ServerMixin:
    @pytest_asyncio.fixture
    async def get_storage_args(self, request, slow_create_collection, aio_connector):
        base = _keepsake_env()

        async def inner(collection="test"):
            args = dict(base, connector=aio_connector)
            if collection is not None:
                # -> "<collection>-vdirsyncer-ci-<uuid4>" under the home set,
                #    deleted (DELETE on the collection URL) at teardown.
                args = await slow_create_collection(
                    self.storage_class, args, collection
                )
            return args

        # StorageTests.test_create_collection creates a collection literally
        # named "test" and never deletes it.  Keepsake has one home for both
        # calendars and address books (/dav/users/<user>/), so a leftover
        # calendar "test" would make the CardDAV variant's MKCOL of the same
        # path fail (and vice versa, and across runs).  Remove it before and
        # after that test, best-effort.
        if request.node.originalname == "test_create_collection":
            await _delete_collections_named("test", base, aio_connector)

        yield inner

        if request.node.originalname == "test_create_collection":
            await _delete_collections_named("test", base, aio_connector)


async def _delete_collections_named(name, base, connector):
    from vdirsyncer.storage.dav import CalDAVStorage
    from vdirsyncer.storage.dav import CardDAVStorage

    for cls in (CalDAVStorage, CardDAVStorage):
        with contextlib.suppress(Exception):
            async for c in cls.discover(**dict(base, connector=connector)):
                if c["collection"] == name:
                    with contextlib.suppress(Exception):
                        await cls(**c).session.request("DELETE", "")
