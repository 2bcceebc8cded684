-- EHR sync: the outbox of changes to deliver to each configured EHR, the ids each EHR gave our resources,
-- per-EHR delivery status, pull watermarks and recorded authorizations to disclose psychotherapy notes.
-- Timestamps are microseconds since the Unix epoch (UTC).

CREATE TABLE sync_outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    ehr             TEXT    NOT NULL,
    -- Delivery order is kept per lane: `Patient/<id>` for everything about one patient, else the resource itself.
    lane            TEXT    NOT NULL,
    res_type        TEXT    NOT NULL,
    res_id          TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    op              TEXT    NOT NULL,            -- upsert | delete
    kind            TEXT    NOT NULL,            -- the <kind> of urn:kap-gateway:<kind>
    id_system       TEXT    NOT NULL,            -- business identifier the EHR matches on
    id_value        TEXT    NOT NULL,
    psychotherapy   INTEGER NOT NULL DEFAULT 0,
    state           TEXT    NOT NULL DEFAULT 'pending', -- pending | delivered | dead | withheld
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    enqueued_at     INTEGER NOT NULL,
    finished_at     INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    outcome         TEXT                         -- the EHR's OperationOutcome of a dead letter
);
CREATE INDEX sync_outbox_lane ON sync_outbox (ehr, state, lane, seq);
CREATE INDEX sync_outbox_due ON sync_outbox (state, next_attempt_at);

CREATE TABLE sync_remote_ids (
    ehr       TEXT NOT NULL,
    res_type  TEXT NOT NULL,
    local_id  TEXT NOT NULL,
    remote_id TEXT NOT NULL,
    PRIMARY KEY (ehr, res_type, local_id)
);

CREATE TABLE sync_ehr_status (
    ehr             TEXT PRIMARY KEY,
    last_success_at INTEGER,
    last_error_at   INTEGER,
    last_error      TEXT,
    delivered       INTEGER NOT NULL DEFAULT 0,
    last_pull_at    INTEGER
);

CREATE TABLE sync_pull_state (
    ehr          TEXT NOT NULL,
    identifier   TEXT NOT NULL,                  -- system|value of the patient identifier pulled
    since        TEXT,                           -- the EHR's time of the last complete pull (for _lastUpdated)
    pulled_at    INTEGER NOT NULL,
    PRIMARY KEY (ehr, identifier)
);

CREATE TABLE sync_disclosure_authorizations (
    patient_id  TEXT    NOT NULL,
    ehr         TEXT    NOT NULL,                -- an EHR name, or * for every EHR
    recorded_at INTEGER NOT NULL,
    recorded_by TEXT    NOT NULL,
    reference   TEXT,                            -- where the signed authorization is kept (document id, …)
    PRIMARY KEY (patient_id, ehr)
);
