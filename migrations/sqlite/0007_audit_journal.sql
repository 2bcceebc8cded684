-- How far each audit journal (src/audit/journal.rs) has been imported: segment number and byte offset, updated in
-- the transaction that imports its lines, so a crash never imports a line twice or skips one.
CREATE TABLE audit_journal (
    journal     TEXT   PRIMARY KEY,
    segment     BIGINT NOT NULL,
    byte_offset BIGINT NOT NULL
);
