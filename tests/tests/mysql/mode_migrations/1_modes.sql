-- Objects created under a session `sql_mode` other than the server's: each
-- test's database must behave as these migrations run in it would.
CREATE TABLE item
(
    id         BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name       VARCHAR(255) NOT NULL,
    short_name VARCHAR(3)   NULL
);

-- Lax: the trigger truncates rather than fails.
SET SESSION sql_mode = '';
CREATE TRIGGER item_short BEFORE INSERT ON item FOR EACH ROW SET NEW.short_name = NEW.name;

-- `||` concatenates in this function's body.
SET SESSION sql_mode = 'PIPES_AS_CONCAT';
CREATE FUNCTION shout(s VARCHAR(50)) RETURNS VARCHAR(60) DETERMINISTIC RETURN s || '!';

-- A row whose id is 0.
SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO';
INSERT INTO item (id, name) VALUES (0, 'zero');

SET SESSION sql_mode = DEFAULT;

CREATE EVENT item_purge ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM item;

-- An event whose end has passed by the time the test's database is cloned
-- (a second after this line): it still exists there, as it does right after
-- a fresh migration. Disabled, so that no event scheduler drops it.
CREATE EVENT item_ends ON SCHEDULE EVERY 1 HOUR ENDS CURRENT_TIMESTAMP + INTERVAL 1 SECOND DISABLE DO DELETE FROM item;
DO SLEEP(1.5);
