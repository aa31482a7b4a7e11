-- The backend matrix's schema (tests/tests/matrix.rs): the same tables on
-- every backend, in each one's dialect.
CREATE TABLE items (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL UNIQUE
) ENGINE = InnoDB;

CREATE TABLE tags (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    item_id BIGINT NOT NULL,
    label VARCHAR(255) NOT NULL,
    FOREIGN KEY (item_id) REFERENCES items (id)
) ENGINE = InnoDB;
