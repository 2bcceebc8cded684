-- FHIR resource store: current versions, full history and search indexes.
-- Timestamps are microseconds since the Unix epoch (UTC) so that both databases compare them the same way.

CREATE TABLE resources (
    pk            INTEGER PRIMARY KEY AUTOINCREMENT,
    res_type      TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    last_updated  INTEGER NOT NULL,
    deleted       INTEGER NOT NULL DEFAULT 0,
    content       TEXT,
    UNIQUE (res_type, id)
);
CREATE INDEX resources_type_updated ON resources (res_type, last_updated);

CREATE TABLE resource_history (
    hpk           INTEGER PRIMARY KEY AUTOINCREMENT,
    res_pk        INTEGER NOT NULL REFERENCES resources (pk),
    res_type      TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    last_updated  INTEGER NOT NULL,
    method        TEXT    NOT NULL,
    content       TEXT,
    UNIQUE (res_type, id, version)
);
CREATE INDEX resource_history_updated ON resource_history (last_updated);
CREATE INDEX resource_history_type ON resource_history (res_type, hpk);

CREATE TABLE idx_token (
    res_pk   INTEGER NOT NULL REFERENCES resources (pk),
    res_type TEXT NOT NULL,
    param    TEXT NOT NULL,
    system   TEXT,
    code     TEXT
);
CREATE INDEX idx_token_lookup ON idx_token (res_type, param, code, system);
CREATE INDEX idx_token_res ON idx_token (res_pk);

CREATE TABLE idx_string (
    res_pk   INTEGER NOT NULL REFERENCES resources (pk),
    res_type TEXT NOT NULL,
    param    TEXT NOT NULL,
    norm     TEXT NOT NULL,
    exact    TEXT NOT NULL
);
CREATE INDEX idx_string_lookup ON idx_string (res_type, param, norm);
CREATE INDEX idx_string_res ON idx_string (res_pk);

CREATE TABLE idx_date (
    res_pk   INTEGER NOT NULL REFERENCES resources (pk),
    res_type TEXT NOT NULL,
    param    TEXT NOT NULL,
    lo       INTEGER NOT NULL,
    hi       INTEGER NOT NULL
);
CREATE INDEX idx_date_lookup ON idx_date (res_type, param, lo, hi);
CREATE INDEX idx_date_res ON idx_date (res_pk);

CREATE TABLE idx_reference (
    res_pk      INTEGER NOT NULL REFERENCES resources (pk),
    res_type    TEXT NOT NULL,
    param       TEXT NOT NULL,
    target_type TEXT,
    target_id   TEXT,
    url         TEXT NOT NULL
);
CREATE INDEX idx_reference_lookup ON idx_reference (res_type, param, target_id, target_type);
CREATE INDEX idx_reference_target ON idx_reference (target_type, target_id);
CREATE INDEX idx_reference_url ON idx_reference (url);
CREATE INDEX idx_reference_res ON idx_reference (res_pk);

CREATE TABLE idx_quantity (
    res_pk   INTEGER NOT NULL REFERENCES resources (pk),
    res_type TEXT NOT NULL,
    param    TEXT NOT NULL,
    value    REAL NOT NULL,
    lo       REAL NOT NULL,
    hi       REAL NOT NULL,
    system   TEXT,
    code     TEXT,
    unit     TEXT
);
CREATE INDEX idx_quantity_lookup ON idx_quantity (res_type, param, value);
CREATE INDEX idx_quantity_res ON idx_quantity (res_pk);

CREATE TABLE idx_uri (
    res_pk   INTEGER NOT NULL REFERENCES resources (pk),
    res_type TEXT NOT NULL,
    param    TEXT NOT NULL,
    uri      TEXT NOT NULL
);
CREATE INDEX idx_uri_lookup ON idx_uri (res_type, param, uri);
CREATE INDEX idx_uri_res ON idx_uri (res_pk);

-- Guards conditional create: one row per (type, normalised If-None-Exist criteria) held by the resource it created,
-- so that concurrent identical conditional creates cannot both insert.
CREATE TABLE conditional_keys (
    res_type      TEXT    NOT NULL,
    criteria_hash TEXT    NOT NULL,
    res_pk        INTEGER NOT NULL REFERENCES resources (pk),
    PRIMARY KEY (res_type, criteria_hash)
);
CREATE INDEX conditional_keys_res ON conditional_keys (res_pk);
