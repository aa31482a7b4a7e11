-- adv_mysql.rs: an app whose database compares text case-sensitively.
ALTER DATABASE CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE tag (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(50) NOT NULL
) ENGINE = InnoDB;
