-- no-transaction
PRAGMA journal_mode = WAL;
CREATE TABLE walled (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
INSERT INTO walled (name) VALUES ('seed');
