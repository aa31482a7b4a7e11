-- The backend matrix's schema (tests/tests/matrix.rs): the same tables on
-- every backend, in each one's dialect.
CREATE TABLE items (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE tags (
    id BIGSERIAL PRIMARY KEY,
    item_id BIGINT NOT NULL REFERENCES items (id),
    label TEXT NOT NULL
);
