-- The backend matrix's schema (tests/tests/matrix.rs): the same tables on
-- every backend, in each one's dialect.
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE tags (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items (id),
    label TEXT NOT NULL
);
