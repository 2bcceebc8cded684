-- SMART on FHIR authorization server: signing keys, registered clients and users, authorization requests and codes,
-- refresh-token families, issued access tokens (for revocation and introspection), EHR launch contexts and
-- client-assertion jti replay protection. Timestamps are microseconds since the Unix epoch.

CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY,
    alg          TEXT    NOT NULL,
    private_der  TEXT    NOT NULL,
    public_jwk   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    retired_at   INTEGER,
    expires_at   INTEGER
);

CREATE TABLE oauth_clients (
    client_id      TEXT PRIMARY KEY,
    name           TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    secret_hash    TEXT,
    redirect_uris  TEXT    NOT NULL,
    allowed_scopes TEXT    NOT NULL,
    jwks           TEXT,
    jwks_uri       TEXT,
    created_at     INTEGER NOT NULL
);

CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    fhir_user     TEXT,
    created_at    INTEGER NOT NULL
);

CREATE TABLE auth_requests (
    id             TEXT PRIMARY KEY,
    client_id      TEXT    NOT NULL,
    redirect_uri   TEXT    NOT NULL,
    scope          TEXT    NOT NULL,
    state          TEXT,
    code_challenge TEXT    NOT NULL,
    nonce          TEXT,
    launch         TEXT,
    username       TEXT,
    patient        TEXT,
    encounter      TEXT,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
);

CREATE TABLE auth_codes (
    code_hash      TEXT PRIMARY KEY,
    family         TEXT    NOT NULL,
    client_id      TEXT    NOT NULL,
    redirect_uri   TEXT    NOT NULL,
    username       TEXT    NOT NULL,
    scope          TEXT    NOT NULL,
    patient        TEXT,
    encounter      TEXT,
    fhir_user      TEXT,
    nonce          TEXT,
    code_challenge TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    used_at        INTEGER
);

CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    family      TEXT    NOT NULL,
    client_id   TEXT    NOT NULL,
    username    TEXT,
    scope       TEXT    NOT NULL,
    patient     TEXT,
    encounter   TEXT,
    fhir_user   TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    rotated_at  INTEGER,
    revoked_at  INTEGER
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);

CREATE TABLE issued_tokens (
    jti         TEXT PRIMARY KEY,
    family      TEXT,
    client_id   TEXT    NOT NULL,
    username    TEXT,
    scope       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX issued_tokens_family ON issued_tokens (family);
CREATE INDEX issued_tokens_expiry ON issued_tokens (expires_at);

CREATE TABLE launch_contexts (
    launch      TEXT PRIMARY KEY,
    patient     TEXT,
    encounter   TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);

CREATE TABLE assertion_jtis (
    client_id   TEXT    NOT NULL,
    jti         TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
);
