CREATE TABLE parent (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    updated_at TEXT
);
CREATE TABLE child (
    id INTEGER PRIMARY KEY,
    parent_id INTEGER NOT NULL REFERENCES parent (id),
    note TEXT
);
