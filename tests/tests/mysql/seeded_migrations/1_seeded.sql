-- A template with rows of its own (seed data), for recycling: a used
-- database must come back with exactly these rows and counters.
CREATE TABLE role (
    role_id INTEGER PRIMARY KEY AUTO_INCREMENT,
    name    VARCHAR(16) UNIQUE NOT NULL
);
INSERT INTO role (name) VALUES ('admin'), ('user');
