-- The example app's schema (example-app/migrations) for MySQL/MariaDB, for
-- the benchmark. Users of the service. Emails are unique regardless of case:
-- PostgreSQL needs a unique index on lower(email); here the column's
-- case-insensitive collation gives the same with a plain unique index.
CREATE TABLE users (
    id         BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    email      VARCHAR(254) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL
               CHECK (CHAR_LENGTH(email) BETWEEN 3 AND 254),
    name       VARCHAR(200) NOT NULL CHECK (CHAR_LENGTH(name) BETWEEN 1 AND 200),
    created_at DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
);

CREATE UNIQUE INDEX users_email_key ON users (email);
CREATE INDEX users_created_at_idx ON users (created_at);
