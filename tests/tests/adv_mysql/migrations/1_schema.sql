-- adv_mysql.rs: an app's schema, as a MySQL shop writes it.
CREATE TABLE account (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    email VARCHAR(100) NOT NULL UNIQUE,
    balance BIGINT NOT NULL DEFAULT 0,
    status VARCHAR(20) NOT NULL DEFAULT 'active'
) ENGINE = InnoDB;

CREATE TABLE counter (
    name VARCHAR(50) NOT NULL PRIMARY KEY,
    n BIGINT NOT NULL
) ENGINE = InnoDB;

-- "the id of the last account created", read by the app after an insert
CREATE TRIGGER account_after_insert AFTER INSERT ON account
FOR EACH ROW SET @last_account_id = NEW.id;

CREATE PROCEDURE bump(IN k VARCHAR(50))
BEGIN
    INSERT INTO counter (name, n) VALUES (k, 1) ON DUPLICATE KEY UPDATE n = n + 1;
END;

CREATE SEQUENCE invoice_seq START WITH 1000;

CREATE PROCEDURE list_accounts()
BEGIN
    SELECT id, email FROM account ORDER BY id;
END;
