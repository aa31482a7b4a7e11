-- adv_mysql.rs: a table with a FULLTEXT index, as a search feature has.
CREATE TABLE article (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    title VARCHAR(200) NOT NULL,
    body TEXT NOT NULL,
    FULLTEXT KEY article_search (title, body)
) ENGINE = InnoDB;
