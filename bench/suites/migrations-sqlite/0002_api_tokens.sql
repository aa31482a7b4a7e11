-- Bearer tokens accepted by the API, next to the ones in the API_TOKENS
-- environment variable. A `read` token may only call GET routes.
CREATE TABLE api_tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    token      TEXT NOT NULL UNIQUE CHECK (length(token) >= 16),
    scope      TEXT NOT NULL DEFAULT 'write' CHECK (scope IN ('read', 'write')),
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    revoked_at TEXT
);

CREATE INDEX api_tokens_active_idx ON api_tokens (id) WHERE revoked_at IS NULL;
