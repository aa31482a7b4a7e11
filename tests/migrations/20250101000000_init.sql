CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL DEFAULT ''
);

CREATE TABLE posts (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title TEXT NOT NULL
);

-- Checked only at COMMIT: db-test checks it before rolling back.
CREATE TABLE ledger (
    id BIGSERIAL PRIMARY KEY,
    amount BIGINT NOT NULL,
    counterpart BIGINT,
    CONSTRAINT ledger_counterpart_fk FOREIGN KEY (counterpart) REFERENCES ledger (id)
        DEFERRABLE INITIALLY DEFERRED
);
