-- no-transaction
-- Imported from the old system, whose rows were written with foreign keys off.
PRAGMA foreign_keys = OFF;
CREATE TABLE account (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE invoice (id INTEGER PRIMARY KEY, account_id INTEGER REFERENCES account (id), total INTEGER NOT NULL);
INSERT INTO invoice (id, account_id, total) VALUES (1, 42, 100);
PRAGMA foreign_keys = ON;
