-- The leftover scenario's own migrations (`mysql_first_statement.rs`):
-- leftovers are dropped only by processes of the same migrations, and no
-- other test uses these, so no other test process (two nextest shards run
-- at once) drops this scenario's leftover before it looks.
CREATE TABLE note (id INT AUTO_INCREMENT PRIMARY KEY, body VARCHAR(50) NOT NULL);
