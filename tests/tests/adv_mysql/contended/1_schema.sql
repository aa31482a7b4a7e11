-- adv_mysql.rs: the schema of the tests that run two at once in a child process (its own working database).
CREATE TABLE account (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    email VARCHAR(100) NOT NULL UNIQUE,
    balance BIGINT NOT NULL DEFAULT 0,
    status VARCHAR(20) NOT NULL DEFAULT 'active'
) ENGINE = InnoDB;

CREATE TABLE post (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    body TEXT NOT NULL
) ENGINE = InnoDB;

CREATE TABLE entry (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    account_id BIGINT NOT NULL,
    FOREIGN KEY (account_id) REFERENCES account (id)
) ENGINE = InnoDB;

CREATE TABLE job (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    state VARCHAR(20) NOT NULL DEFAULT 'pending',
    KEY job_state (state)
) ENGINE = InnoDB;
