-- The example app's schema (example-app/migrations) for SQLite, for the
-- benchmark. Users of the service. Emails are unique regardless of case.
-- AUTOINCREMENT: ids are never reused, as with PostgreSQL's identity.
CREATE TABLE users (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    email      TEXT NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    name       TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE INDEX users_created_at_idx ON users (created_at);
