CREATE TABLE item
(
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE tag
(
    id      INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES item (id),
    label   TEXT    NOT NULL
);

-- One seed row: every test starts from it.
INSERT INTO item (name) VALUES ('seed');
