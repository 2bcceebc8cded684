-- Bulk Data export jobs (https://hl7.org/fhir/uv/bulkdata/export.html) and their NDJSON output, stored in the
-- database in chunks so that any replica can serve a file another replica wrote.
-- Timestamps are microseconds since the Unix epoch (UTC).

CREATE TABLE bulk_jobs (
    id               TEXT    PRIMARY KEY,
    -- queued | running | completed | failed | cancelled | expired
    status           TEXT    NOT NULL,
    -- system | patient | group
    level            TEXT    NOT NULL,
    group_id         TEXT,
    -- Group export: JSON array of the member patients' ids, fixed at kick-off.
    members          TEXT,
    request_url      TEXT    NOT NULL,
    -- JSON array of resource types, in export order; explicit = 1 when the client named them in _type.
    types            TEXT    NOT NULL,
    explicit_types   BIGINT NOT NULL,
    -- JSON object: resource type -> search query string (_typeFilter).
    type_filters     TEXT    NOT NULL,
    since            TEXT,
    transaction_time BIGINT NOT NULL,
    -- The requesting token's access context: exports see exactly what a search by that token sees.
    client_id        TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    scopes           TEXT    NOT NULL,
    patient          TEXT,
    psychotherapy    BIGINT NOT NULL,
    admin            BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    completed_at     BIGINT,
    expires_at       BIGINT,
    -- Which worker runs the job, and until when its claim holds (renewed with every chunk written).
    lease_owner      TEXT,
    lease_until      BIGINT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    -- Resume point: the type being exported and the last resource key written.
    type_index       BIGINT NOT NULL DEFAULT 0,
    after_pk         BIGINT NOT NULL DEFAULT 0,
    exported         BIGINT NOT NULL DEFAULT 0,
    error            TEXT
);
CREATE INDEX bulk_jobs_status ON bulk_jobs (status, created_at);

-- Exports page through each type in key order (res_type = ? AND pk > ? ORDER BY pk LIMIT n): with this index both
-- databases walk it directly instead of sorting every row of the type for each page.
CREATE INDEX resources_type_pk ON resources (res_type, pk);

CREATE TABLE bulk_files (
    job_id     TEXT    NOT NULL REFERENCES bulk_jobs (id) ON DELETE CASCADE,
    file_no    BIGINT NOT NULL,
    res_type   TEXT    NOT NULL,
    line_count BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, file_no)
);

CREATE TABLE bulk_chunks (
    job_id  TEXT    NOT NULL REFERENCES bulk_jobs (id) ON DELETE CASCADE,
    file_no BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    data    TEXT    NOT NULL,
    PRIMARY KEY (job_id, file_no, seq)
);
-- Chunks are transient (they expire) and already large: compressing them would cost the export more CPU than the
-- disk it saves.
ALTER TABLE bulk_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
