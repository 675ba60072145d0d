"""The ledger's tables, as each database spells them (the statements on them are one set,
in ``core.py`` and ``reads.py``). Their layout is the one earlier versions wrote: existing
ledgers open as they are."""

from __future__ import annotations

import hashlib

SQLITE_SCHEMA_VERSION = "2"
POSTGRES_SCHEMA_VERSION = "1"

_SQLITE = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS listings (
    id INTEGER PRIMARY KEY,
    identity TEXT NOT NULL UNIQUE,      -- folder:<real path> | order:<manifest order>
    name TEXT NOT NULL,
    label TEXT NOT NULL UNIQUE,         -- its download folder: the name, or "name [2]"...
    owner TEXT,                         -- the run holding its claim
    lease_until REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS listings_by_owner ON listings (owner);
CREATE TABLE IF NOT EXISTS images (
    listing_id INTEGER NOT NULL REFERENCES listings (id),
    client_image_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    md5 TEXT,                           -- the content last seen (and uploaded, with image_url)
    image_url TEXT,
    state TEXT NOT NULL,                -- uploaded | ordered | failed | late | changed
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (listing_id, client_image_id)
);
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY,
    listing_id INTEGER REFERENCES listings (id),   -- NULL: a fixed-size batch
    batch INTEGER NOT NULL,
    part INTEGER NOT NULL,
    name TEXT NOT NULL,
    body BLOB NOT NULL,
    body_hash TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,                -- sent | created | refused | conflict
    order_id TEXT,
    status TEXT,
    images INTEGER NOT NULL,
    error TEXT,
    result BLOB,                        -- the latest image list the service reported
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_listing ON orders (listing_id, batch);
CREATE INDEX IF NOT EXISTS orders_by_id ON orders (order_id);
-- An image's content is looked for across the account by its size first (moved folders).
CREATE INDEX IF NOT EXISTS images_by_size ON images (size);
CREATE TABLE IF NOT EXISTS order_items (
    order_ref INTEGER NOT NULL REFERENCES orders (id),
    listing_id INTEGER NOT NULL,
    client_image_id TEXT NOT NULL,
    md5 TEXT NOT NULL,
    path TEXT NOT NULL,
    live INTEGER NOT NULL DEFAULT 1,    -- 0 once its order was refused
    PRIMARY KEY (order_ref, listing_id, client_image_id)
);
-- The promise itself: one content of one image is in at most one live order.
CREATE UNIQUE INDEX IF NOT EXISTS one_live_order_per_content
    ON order_items (listing_id, client_image_id, md5) WHERE live = 1;
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,
    error TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outputs (
    order_id TEXT NOT NULL,
    client_image_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    PRIMARY KEY (order_id, client_image_id)
);
CREATE TABLE IF NOT EXISTS events (
    order_id TEXT NOT NULL,
    event TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (order_id, event, updated_at)
);
"""
SQLITE_SCHEMA = [s.strip() for s in _SQLITE.split(";\n") if s.strip()]

# The account's webhook secret, one row of its meta: drawn into it once (lifecycle.py) and
# carried with the account to another ledger (transfer.py). A row already there stays.
WEBHOOK_META_READ = "SELECT value FROM {p}meta WHERE {a}name = 'webhook_secret'"
WEBHOOK_META_KEEP = (
    "INSERT INTO {p}meta ({ac}name, value) VALUES ({av}'webhook_secret', ?) ON CONFLICT DO NOTHING"
)

# Made with the tables, and for tables made before it by a role that owns them (postgres.py).
IMAGES_BY_SIZE_POSTGRES = (
    "CREATE INDEX IF NOT EXISTS styldod_images_by_size ON styldod_images (size)"
)

POSTGRES_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS styldod_meta (
        account TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (account, name))""",
    """CREATE TABLE IF NOT EXISTS styldod_listings (
        id BIGSERIAL PRIMARY KEY,
        account TEXT NOT NULL,
        identity TEXT NOT NULL,
        name TEXT NOT NULL,
        label TEXT NOT NULL,
        owner TEXT,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        UNIQUE (account, identity),
        UNIQUE (account, label))""",
    "CREATE INDEX IF NOT EXISTS styldod_listings_by_owner ON styldod_listings (owner)",
    """CREATE TABLE IF NOT EXISTS styldod_images (
        listing_id BIGINT NOT NULL REFERENCES styldod_listings (id),
        client_image_id TEXT NOT NULL,
        path TEXT NOT NULL,
        size BIGINT NOT NULL,
        mtime_ns BIGINT NOT NULL,
        md5 TEXT,
        image_url TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (listing_id, client_image_id))""",
    IMAGES_BY_SIZE_POSTGRES,
    """CREATE TABLE IF NOT EXISTS styldod_orders (
        id BIGSERIAL PRIMARY KEY,
        account TEXT NOT NULL,
        listing_id BIGINT REFERENCES styldod_listings (id),
        batch INTEGER NOT NULL,
        part INTEGER NOT NULL,
        name TEXT NOT NULL,
        body BYTEA NOT NULL,
        body_hash TEXT NOT NULL,
        idempotency_key TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        order_id TEXT,
        status TEXT,
        images INTEGER NOT NULL,
        error TEXT,
        result BYTEA,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS styldod_orders_by_listing ON styldod_orders (listing_id, batch)",
    "CREATE INDEX IF NOT EXISTS styldod_orders_by_id ON styldod_orders (account, order_id)",
    """CREATE TABLE IF NOT EXISTS styldod_order_items (
        order_ref BIGINT NOT NULL REFERENCES styldod_orders (id),
        listing_id BIGINT NOT NULL,
        client_image_id TEXT NOT NULL,
        md5 TEXT NOT NULL,
        path TEXT NOT NULL,
        live BOOLEAN NOT NULL DEFAULT TRUE,
        PRIMARY KEY (order_ref, listing_id, client_image_id))""",
    # The promise itself: one content of one image is in at most one live order.
    """CREATE UNIQUE INDEX IF NOT EXISTS styldod_one_live_order_per_content
        ON styldod_order_items (listing_id, client_image_id, md5) WHERE live""",
    """CREATE TABLE IF NOT EXISTS styldod_failures (
        account TEXT NOT NULL, path TEXT NOT NULL, error TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (account, path))""",
    """CREATE TABLE IF NOT EXISTS styldod_outputs (
        account TEXT NOT NULL, order_id TEXT NOT NULL, client_image_id TEXT NOT NULL,
        path TEXT NOT NULL, size BIGINT NOT NULL, md5 TEXT NOT NULL,
        PRIMARY KEY (account, order_id, client_image_id))""",
    """CREATE TABLE IF NOT EXISTS styldod_events (
        account TEXT NOT NULL, order_id TEXT NOT NULL, event TEXT NOT NULL,
        updated_at TEXT NOT NULL, payload BYTEA NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (account, order_id, event, updated_at))""",
]
# Two workers creating the tables at once would trip over each other in the catalogue.
POSTGRES_SCHEMA_LOCK = (
    int.from_bytes(hashlib.sha256(b"styldod-batch schema").digest()[:8], "big") >> 1
)
POSTGRES_TABLES = (
    "styldod_meta", "styldod_listings", "styldod_images", "styldod_orders",
    "styldod_order_items", "styldod_failures", "styldod_outputs", "styldod_events",
)  # fmt: skip
