-- Bearer tokens accepted by the API, next to the ones in the API_TOKENS
-- environment variable. A `read` token may only call GET routes.
CREATE TABLE api_tokens (
    id         BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name       VARCHAR(200) NOT NULL UNIQUE,
    token      VARCHAR(255) NOT NULL UNIQUE CHECK (CHAR_LENGTH(token) >= 16),
    scope      VARCHAR(5)   NOT NULL DEFAULT 'write' CHECK (scope IN ('read', 'write')),
    created_at DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    revoked_at DATETIME(6)  NULL
);

-- MySQL has no partial indexes: PostgreSQL's index of the active tokens
-- (`WHERE revoked_at IS NULL`) becomes one on (revoked_at, id).
CREATE INDEX api_tokens_active_idx ON api_tokens (revoked_at, id);
