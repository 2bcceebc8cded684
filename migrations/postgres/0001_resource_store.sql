-- FHIR resource store: current versions, full history and search indexes.
-- Timestamps are microseconds since the Unix epoch (UTC) so that both databases compare them the same way.

CREATE TABLE resources (
    pk            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    res_type      TEXT COLLATE "C"    NOT NULL,
    id            TEXT COLLATE "C"    NOT NULL,
    version       BIGINT NOT NULL,
    last_updated  BIGINT NOT NULL,
    deleted       BIGINT NOT NULL DEFAULT 0,
    content       TEXT COLLATE "C",
    UNIQUE (res_type, id)
);
CREATE INDEX resources_type_updated ON resources (res_type, last_updated);

CREATE TABLE resource_history (
    hpk           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    res_pk        BIGINT NOT NULL REFERENCES resources (pk),
    res_type      TEXT COLLATE "C"    NOT NULL,
    id            TEXT COLLATE "C"    NOT NULL,
    version       BIGINT NOT NULL,
    last_updated  BIGINT NOT NULL,
    method        TEXT COLLATE "C"    NOT NULL,
    content       TEXT COLLATE "C",
    UNIQUE (res_type, id, version)
);
CREATE INDEX resource_history_updated ON resource_history (last_updated);
CREATE INDEX resource_history_type ON resource_history (res_type, hpk);

CREATE TABLE idx_token (
    res_pk   BIGINT NOT NULL REFERENCES resources (pk),
    res_type TEXT COLLATE "C" NOT NULL,
    param    TEXT COLLATE "C" NOT NULL,
    system   TEXT COLLATE "C",
    code     TEXT COLLATE "C"
);
CREATE INDEX idx_token_lookup ON idx_token (res_type, param, code, system);
CREATE INDEX idx_token_res ON idx_token (res_pk);

CREATE TABLE idx_string (
    res_pk   BIGINT NOT NULL REFERENCES resources (pk),
    res_type TEXT COLLATE "C" NOT NULL,
    param    TEXT COLLATE "C" NOT NULL,
    norm     TEXT COLLATE "C" NOT NULL,
    exact    TEXT COLLATE "C" NOT NULL
);
CREATE INDEX idx_string_lookup ON idx_string (res_type, param, norm);
CREATE INDEX idx_string_res ON idx_string (res_pk);

CREATE TABLE idx_date (
    res_pk   BIGINT NOT NULL REFERENCES resources (pk),
    res_type TEXT COLLATE "C" NOT NULL,
    param    TEXT COLLATE "C" NOT NULL,
    lo       BIGINT NOT NULL,
    hi       BIGINT NOT NULL
);
CREATE INDEX idx_date_lookup ON idx_date (res_type, param, lo, hi);
CREATE INDEX idx_date_res ON idx_date (res_pk);

CREATE TABLE idx_reference (
    res_pk      BIGINT NOT NULL REFERENCES resources (pk),
    res_type    TEXT COLLATE "C" NOT NULL,
    param       TEXT COLLATE "C" NOT NULL,
    target_type TEXT COLLATE "C",
    target_id   TEXT COLLATE "C",
    url         TEXT COLLATE "C" NOT NULL
);
CREATE INDEX idx_reference_lookup ON idx_reference (res_type, param, target_id, target_type);
CREATE INDEX idx_reference_target ON idx_reference (target_type, target_id);
CREATE INDEX idx_reference_url ON idx_reference (url);
CREATE INDEX idx_reference_res ON idx_reference (res_pk);

CREATE TABLE idx_quantity (
    res_pk   BIGINT NOT NULL REFERENCES resources (pk),
    res_type TEXT COLLATE "C" NOT NULL,
    param    TEXT COLLATE "C" NOT NULL,
    value    DOUBLE PRECISION NOT NULL,
    lo       DOUBLE PRECISION NOT NULL,
    hi       DOUBLE PRECISION NOT NULL,
    system   TEXT COLLATE "C",
    code     TEXT COLLATE "C",
    unit     TEXT COLLATE "C"
);
CREATE INDEX idx_quantity_lookup ON idx_quantity (res_type, param, value);
CREATE INDEX idx_quantity_res ON idx_quantity (res_pk);

CREATE TABLE idx_uri (
    res_pk   BIGINT NOT NULL REFERENCES resources (pk),
    res_type TEXT COLLATE "C" NOT NULL,
    param    TEXT COLLATE "C" NOT NULL,
    uri      TEXT COLLATE "C" NOT NULL
);
CREATE INDEX idx_uri_lookup ON idx_uri (res_type, param, uri);
CREATE INDEX idx_uri_res ON idx_uri (res_pk);

-- Guards conditional create: one row per (type, normalised If-None-Exist criteria) held by the resource it created,
-- so that concurrent identical conditional creates cannot both insert.
CREATE TABLE conditional_keys (
    res_type      TEXT COLLATE "C"    NOT NULL,
    criteria_hash TEXT COLLATE "C"    NOT NULL,
    res_pk        BIGINT NOT NULL REFERENCES resources (pk),
    PRIMARY KEY (res_type, criteria_hash)
);
CREATE INDEX conditional_keys_res ON conditional_keys (res_pk);
