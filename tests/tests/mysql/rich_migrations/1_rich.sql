-- A schema with every kind of object a per-test database must copy.
CREATE TABLE item (
    id INT PRIMARY KEY AUTO_INCREMENT,
    name VARCHAR(50) NOT NULL UNIQUE,
    price INT NOT NULL,
    doubled INT AS (price * 2) STORED
);

CREATE TABLE item_log (
    id INT PRIMARY KEY AUTO_INCREMENT,
    item_id INT NOT NULL,
    FOREIGN KEY (item_id) REFERENCES item (id)
);

CREATE TRIGGER item_logged AFTER INSERT ON item
    FOR EACH ROW INSERT INTO item_log (item_id) VALUES (NEW.id);

CREATE VIEW cheap_items AS SELECT * FROM item WHERE price < 10;

-- Sorts before the view it reads.
CREATE VIEW cheap_item_names AS SELECT name FROM cheap_items;

CREATE FUNCTION total_price() RETURNS BIGINT READS SQL DATA
    RETURN (SELECT COALESCE(SUM(price), 0) FROM item);

CREATE PROCEDURE add_item(item_name VARCHAR(50))
    INSERT INTO item (name, price) VALUES (item_name, 0);

INSERT INTO item (name, price) VALUES ('seed-a', 1), ('seed-b', 2);

-- A view that calls a stored function: a copy must create the function
-- first (the view sorts before it by name, too).
CREATE FUNCTION zz_price_label(p INT) RETURNS VARCHAR(20) DETERMINISTIC NO SQL
    RETURN CONCAT('$', p);

CREATE VIEW labelled_items AS SELECT name, zz_price_label(price) AS label FROM item;
