-- Its own schema: a regression of `a_task_holding_a_guard_past_the_end_cannot_commit`
-- would commit into this working database only.
CREATE TABLE note (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    body VARCHAR(100) NOT NULL
) ENGINE = InnoDB;
