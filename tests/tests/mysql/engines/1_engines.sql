-- A table of an engine that cannot roll back, beside an InnoDB one.
CREATE TABLE hits (page VARCHAR(50) NOT NULL, n INT NOT NULL) ENGINE = MyISAM;
CREATE TABLE pages (name VARCHAR(50) PRIMARY KEY) ENGINE = InnoDB;
