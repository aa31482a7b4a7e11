-- Only the tests of DDL alter this table. An ALTER waits for every open
-- transaction that touched its table, and transaction-mode tests share one
-- working database: on `users` it waited (and timed out) behind a test that
-- holds its transaction for seconds on purpose.
CREATE TABLE ddl_scratch (
    id BIGSERIAL PRIMARY KEY,
    note TEXT NOT NULL DEFAULT ''
);
