-- The authorization server's records (codes, sessions, grants, refresh tokens, jtis, keys, …):
-- see AuthState. A row whose expires_at (Unix seconds) is not after now no longer exists for
-- any call; insert replaces it and purge_expired deletes it.
CREATE TABLE auth_state (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    owner      TEXT NULL,
    value      JSONB NOT NULL,
    expires_at BIGINT NOT NULL,
    consumed   BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX auth_state_owner ON auth_state (kind, owner, created_at);
CREATE INDEX auth_state_expires ON auth_state (expires_at);
