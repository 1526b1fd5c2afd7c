-- The PostgreSQL schema, as numbered migrations: a store applies every one above its recorded version, in
-- order (engine/store/migrations.py reads this file). Never edit a migration that has shipped: add the next
-- one. The tables, columns and constraints are SQLite's (sqlite.sql) in this dialect, so both stores pass
-- one contract suite; migration 6 (the shared rate budget) exists here only.

-- migration 1
CREATE TABLE workflows (
    id TEXT COLLATE "C" PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    account TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount TEXT NOT NULL,
    lane TEXT NOT NULL,
    lane_held BOOLEAN NOT NULL DEFAULT FALSE,
    idempotency_key TEXT CONSTRAINT workflows_idempotency_key_key UNIQUE,
    exchange_uuid TEXT CONSTRAINT workflows_exchange_uuid_key UNIQUE,
    txid TEXT,
    exchange_state TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    submit_count INTEGER NOT NULL DEFAULT 0,
    next_run_at DOUBLE PRECISION,
    deadline_at TEXT COLLATE "C",
    submit_body TEXT,
    submitted_at TEXT COLLATE "C",
    cancel_requested_at TEXT COLLATE "C",
    resolution TEXT,
    reason TEXT,
    error TEXT,
    data TEXT NOT NULL DEFAULT '{}',
    version BIGINT NOT NULL,
    event_seq BIGINT NOT NULL,
    last_hash TEXT NOT NULL,
    lease_owner TEXT,
    lease_expires_at DOUBLE PRECISION,
    created_at TEXT COLLATE "C" NOT NULL,
    updated_at TEXT COLLATE "C" NOT NULL
);
-- Design §3.3: at most one unresolved submit per lane, enforced here and not in memory.
CREATE UNIQUE INDEX workflows_lane_unresolved ON workflows (lane) WHERE lane_held;
CREATE INDEX workflows_due ON workflows (next_run_at) WHERE next_run_at IS NOT NULL;
CREATE INDEX workflows_state ON workflows (state, id);
CREATE INDEX workflows_spent ON workflows (account, currency, submitted_at);

CREATE TABLE events (
    workflow_id TEXT COLLATE "C" NOT NULL REFERENCES workflows (id),
    seq BIGINT NOT NULL,
    at TEXT NOT NULL,
    trigger TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (workflow_id, seq)
);
-- The audit trail is append-only: the database itself refuses edits, deletions and truncation.
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only' USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

-- migration 2
-- Withdrawals attributed to a workflow other than by its own exchange_uuid (see the SQLite migration).
CREATE TABLE attributions (
    exchange_uuid TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL REFERENCES workflows (id),
    at TEXT NOT NULL
);

-- migration 3
-- Workflows of any kind: a workflow created by another one (a batch's child) names its parent (see SQLite).
ALTER TABLE workflows ADD COLUMN parent_id TEXT COLLATE "C" REFERENCES workflows (id);
CREATE INDEX workflows_parent ON workflows (parent_id, state) WHERE parent_id IS NOT NULL;

-- migration 4
-- References and search (see the SQLite migration 4).
ALTER TABLE workflows ADD COLUMN net_type TEXT, ADD COLUMN reference TEXT, ADD COLUMN metadata TEXT;
UPDATE workflows SET net_type = request::jsonb ->> 'net_type';
CREATE UNIQUE INDEX workflows_reference ON workflows (reference, account) WHERE reference IS NOT NULL;
CREATE INDEX workflows_account ON workflows (account, id);
CREATE INDEX workflows_created ON workflows (created_at);
CREATE INDEX workflows_reason ON workflows (reason, id) WHERE reason IS NOT NULL;

-- migration 5
-- The global event feed (Store.feed). A sequence number alone is not commit order here: several writers
-- draw numbers, and a lower one can commit later. Each event also records the id of the transaction that
-- inserted it; the feed serves only events of transactions older than every one still running (the
-- snapshot's xmin), ordered by (xid, pos), so nothing can ever commit behind a cursor already handed out.
ALTER TABLE events ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE events ADD COLUMN pos BIGINT GENERATED ALWAYS AS IDENTITY;
CREATE INDEX events_feed ON events (xid, pos);
-- Webhooks (engine/store/webhooks.py).
CREATE TABLE webhook_subscriptions (
    id TEXT COLLATE "C" PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secrets TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    feed_cursor TEXT,
    deleted_at DOUBLE PRECISION
);
-- The delivery outbox's rows (see engine/store/webhooks.py); times are epoch seconds.
CREATE TABLE webhook_deliveries (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id TEXT COLLATE "C" NOT NULL REFERENCES webhook_subscriptions (id),
    event_id TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    body TEXT NOT NULL,
    event_at DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_from DOUBLE PRECISION NOT NULL,
    next_attempt_at DOUBLE PRECISION,
    lease_owner TEXT,
    lease_expires_at DOUBLE PRECISION,
    last_attempt_at DOUBLE PRECISION,
    last_status INTEGER,
    last_error TEXT,
    delivered_at DOUBLE PRECISION,
    CONSTRAINT webhook_deliveries_event UNIQUE (subscription_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (subscription_id, workflow_id, seq)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (subscription_id, id);

-- migration 6
-- Each worker's share of an account's request budget (engine.upbit.budget): the rows that have not
-- expired book at most the account's budget in total.
CREATE TABLE budget_shares (
    account TEXT NOT NULL,
    owner TEXT NOT NULL,
    share INTEGER NOT NULL CHECK (share >= 0),
    demand REAL NOT NULL DEFAULT 0,
    draining INTEGER NOT NULL DEFAULT 0 CHECK (draining >= 0),
    drain_until TIMESTAMPTZ,
    expires_at TIMESTAMPTZ NOT NULL,
    beat BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT budget_shares_pkey PRIMARY KEY (account, owner)
);

-- migration 7
-- Named operators, console sessions and attribution (see the SQLite migration 7).
CREATE TABLE operators (
    name TEXT COLLATE "C" PRIMARY KEY,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE console_sessions (
    token_hash TEXT PRIMARY KEY,
    operator TEXT COLLATE "C" NOT NULL REFERENCES operators (name) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL
);
CREATE INDEX console_sessions_operator ON console_sessions (operator);
ALTER TABLE workflows ADD COLUMN created_by TEXT, ADD COLUMN cancel_by TEXT, ADD COLUMN cancel_note TEXT,
    ADD COLUMN resolution_by TEXT, ADD COLUMN resolution_note TEXT;
