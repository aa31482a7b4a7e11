-- Triggers that leave session state without naming a user variable: one
-- CALLs a procedure that sets one, the other takes a sequence's next value
-- (the session's PREVIOUS VALUE FOR). No trigger here names a user
-- variable.
CREATE SEQUENCE ledger_seq START WITH 500;

CREATE PROCEDURE remember_ledger() SET @ledger_seen = 1;

CREATE TABLE ledger
(
    id     BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    amount INT    NOT NULL
) ENGINE = InnoDB;

CREATE TRIGGER ledger_after_insert AFTER INSERT ON ledger FOR EACH ROW CALL remember_ledger();

CREATE TABLE numbered
(
    id    BIGINT      NOT NULL PRIMARY KEY,
    label VARCHAR(20) NOT NULL
) ENGINE = InnoDB;

CREATE TRIGGER numbered_before_insert BEFORE INSERT ON numbered
FOR EACH ROW SET NEW.id = NEXT VALUE FOR ledger_seq;
