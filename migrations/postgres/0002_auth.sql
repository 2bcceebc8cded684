-- SMART on FHIR authorization server: signing keys, registered clients and users, authorization requests and codes,
-- refresh-token families, issued access tokens (for revocation and introspection), EHR launch contexts and
-- client-assertion jti replay protection. Timestamps are microseconds since the Unix epoch.

CREATE TABLE signing_keys (
    kid          TEXT COLLATE "C" PRIMARY KEY,
    alg          TEXT COLLATE "C"    NOT NULL,
    private_der  TEXT COLLATE "C"    NOT NULL,
    public_jwk   TEXT COLLATE "C"    NOT NULL,
    created_at   BIGINT NOT NULL,
    retired_at   BIGINT,
    expires_at   BIGINT
);

CREATE TABLE oauth_clients (
    client_id      TEXT COLLATE "C" PRIMARY KEY,
    name           TEXT COLLATE "C"    NOT NULL,
    kind           TEXT COLLATE "C"    NOT NULL,
    secret_hash    TEXT COLLATE "C",
    redirect_uris  TEXT COLLATE "C"    NOT NULL,
    allowed_scopes TEXT COLLATE "C"    NOT NULL,
    jwks           TEXT COLLATE "C",
    jwks_uri       TEXT COLLATE "C",
    created_at     BIGINT NOT NULL
);

CREATE TABLE users (
    username      TEXT COLLATE "C" PRIMARY KEY,
    password_hash TEXT COLLATE "C"    NOT NULL,
    role          TEXT COLLATE "C"    NOT NULL,
    fhir_user     TEXT COLLATE "C",
    created_at    BIGINT NOT NULL
);

CREATE TABLE auth_requests (
    id             TEXT COLLATE "C" PRIMARY KEY,
    client_id      TEXT COLLATE "C"    NOT NULL,
    redirect_uri   TEXT COLLATE "C"    NOT NULL,
    scope          TEXT COLLATE "C"    NOT NULL,
    state          TEXT COLLATE "C",
    code_challenge TEXT COLLATE "C"    NOT NULL,
    nonce          TEXT COLLATE "C",
    launch         TEXT COLLATE "C",
    username       TEXT COLLATE "C",
    patient        TEXT COLLATE "C",
    encounter      TEXT COLLATE "C",
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL
);

CREATE TABLE auth_codes (
    code_hash      TEXT COLLATE "C" PRIMARY KEY,
    family         TEXT COLLATE "C"    NOT NULL,
    client_id      TEXT COLLATE "C"    NOT NULL,
    redirect_uri   TEXT COLLATE "C"    NOT NULL,
    username       TEXT COLLATE "C"    NOT NULL,
    scope          TEXT COLLATE "C"    NOT NULL,
    patient        TEXT COLLATE "C",
    encounter      TEXT COLLATE "C",
    fhir_user      TEXT COLLATE "C",
    nonce          TEXT COLLATE "C",
    code_challenge TEXT COLLATE "C"    NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT
);

CREATE TABLE refresh_tokens (
    token_hash  TEXT COLLATE "C" PRIMARY KEY,
    family      TEXT COLLATE "C"    NOT NULL,
    client_id   TEXT COLLATE "C"    NOT NULL,
    username    TEXT COLLATE "C",
    scope       TEXT COLLATE "C"    NOT NULL,
    patient     TEXT COLLATE "C",
    encounter   TEXT COLLATE "C",
    fhir_user   TEXT COLLATE "C",
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    rotated_at  BIGINT,
    revoked_at  BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);

CREATE TABLE issued_tokens (
    jti         TEXT COLLATE "C" PRIMARY KEY,
    family      TEXT COLLATE "C",
    client_id   TEXT COLLATE "C"    NOT NULL,
    username    TEXT COLLATE "C",
    scope       TEXT COLLATE "C"    NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX issued_tokens_family ON issued_tokens (family);
CREATE INDEX issued_tokens_expiry ON issued_tokens (expires_at);

CREATE TABLE launch_contexts (
    launch      TEXT COLLATE "C" PRIMARY KEY,
    patient     TEXT COLLATE "C",
    encounter   TEXT COLLATE "C",
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

CREATE TABLE assertion_jtis (
    client_id   TEXT COLLATE "C"    NOT NULL,
    jti         TEXT COLLATE "C"    NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
