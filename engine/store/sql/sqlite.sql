-- The SQLite schema, as numbered migrations: a store applies every one above its recorded version, in
-- order, each in one transaction (engine/store/migrations.py reads this file). Never edit a migration that
-- has shipped: add the next one. PostgreSQL keeps the same tables in its dialect (postgres.sql).

-- migration 1
CREATE TABLE workflows (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    account TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount TEXT NOT NULL,
    lane TEXT NOT NULL,
    lane_held INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT UNIQUE,
    exchange_uuid TEXT UNIQUE,
    txid TEXT,
    exchange_state TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    submit_count INTEGER NOT NULL DEFAULT 0,
    next_run_at REAL,
    deadline_at TEXT,
    submit_body TEXT,
    submitted_at TEXT,
    cancel_requested_at TEXT,
    resolution TEXT,
    reason TEXT,
    error TEXT,
    data TEXT NOT NULL DEFAULT '{}',
    version INTEGER NOT NULL,
    event_seq INTEGER NOT NULL,
    last_hash TEXT NOT NULL,
    lease_owner TEXT,
    lease_expires_at REAL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
-- Design §3.3: at most one unresolved submit per lane, enforced here and not in memory.
CREATE UNIQUE INDEX workflows_lane_unresolved ON workflows (lane) WHERE lane_held = 1;
CREATE INDEX workflows_due ON workflows (next_run_at) WHERE next_run_at IS NOT NULL;
CREATE INDEX workflows_state ON workflows (state, id);
CREATE INDEX workflows_spent ON workflows (account, currency, submitted_at);

CREATE TABLE events (
    workflow_id TEXT NOT NULL REFERENCES workflows (id),
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    trigger TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (workflow_id, seq)
);
-- The audit trail is append-only: the database itself refuses edits and deletions.
CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;

-- migration 2
-- Withdrawals attributed to a workflow other than by its own exchange_uuid: one that appeared late for a
-- POST the workflow had given up (abandoned, or resubmitted and answered). owners_of reads both, so no
-- other workflow ever adopts it.
CREATE TABLE attributions (
    exchange_uuid TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL REFERENCES workflows (id),
    at TEXT NOT NULL
);

-- migration 3
-- Workflows of any kind: a workflow created by another one (a batch's child withdrawal) names its parent.
-- Existing rows keep every value (parent_id NULL), so their event chains verify as before.
ALTER TABLE workflows ADD COLUMN parent_id TEXT REFERENCES workflows (id);
CREATE INDEX workflows_parent ON workflows (parent_id, state) WHERE parent_id IS NOT NULL;

-- migration 4
-- References and search (issue #13): the caller's payout id and metadata, fixed at creation, and the
-- request's network as a column so lists can filter on it. A reference is unique per account when given;
-- the index leads with the reference so a look-up by reference alone (any account) uses it too.
ALTER TABLE workflows ADD COLUMN net_type TEXT;
ALTER TABLE workflows ADD COLUMN reference TEXT;
ALTER TABLE workflows ADD COLUMN metadata TEXT;
UPDATE workflows SET net_type = json_extract(request, '$.net_type');
CREATE UNIQUE INDEX workflows_reference ON workflows (reference, account) WHERE reference IS NOT NULL;
-- List filters: by account (newest first) and by creation time. updated_at is left unindexed on purpose:
-- it moves on every transition, and an index there would cost every commit a write. A reason is set only
-- when a workflow stops (aborted, needs_review), so its partial index costs little.
CREATE INDEX workflows_account ON workflows (account, id);
CREATE INDEX workflows_created ON workflows (created_at);
CREATE INDEX workflows_reason ON workflows (reason, id) WHERE reason IS NOT NULL;

-- migration 5
-- Webhooks (engine/store/webhooks.py). The global feed needs no column here: it reads the events'
-- rowid, which one writer assigns in commit order.
CREATE TABLE webhook_subscriptions (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secrets TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    feed_cursor TEXT,
    deleted_at REAL
);
-- The delivery outbox's rows (see engine/store/webhooks.py); times are epoch seconds.
CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY,
    subscription_id TEXT NOT NULL REFERENCES webhook_subscriptions (id),
    event_id TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    body TEXT NOT NULL,
    event_at REAL NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_from REAL NOT NULL,
    next_attempt_at REAL,
    lease_owner TEXT,
    lease_expires_at REAL,
    last_attempt_at REAL,
    last_status INTEGER,
    last_error TEXT,
    delivered_at REAL,
    CONSTRAINT webhook_deliveries_event UNIQUE (subscription_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (subscription_id, workflow_id, seq)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (subscription_id, id);

-- migration 7
-- Named operators (issue #14, engine/store/operators.py). Credentials are stored hashed only: an API
-- token's SHA-256 (it is high-entropy), a password's salted scrypt with its parameters. A console
-- session's cookie value is held as its SHA-256 too; last_seen (epoch seconds) decides idle expiry.
CREATE TABLE operators (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE console_sessions (
    token_hash TEXT PRIMARY KEY,
    operator TEXT NOT NULL REFERENCES operators (name) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE INDEX console_sessions_operator ON console_sessions (operator);
-- Attribution: who submitted a workflow (fixed at creation), and who asked for its pending cancel or
-- resolution, with their note (set with the flag). Existing rows keep NULL: unattributed.
ALTER TABLE workflows ADD COLUMN created_by TEXT;
ALTER TABLE workflows ADD COLUMN cancel_by TEXT;
ALTER TABLE workflows ADD COLUMN cancel_note TEXT;
ALTER TABLE workflows ADD COLUMN resolution_by TEXT;
ALTER TABLE workflows ADD COLUMN resolution_note TEXT;
