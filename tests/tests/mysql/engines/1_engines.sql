-- A table of an engine that cannot roll back, beside an InnoDB one.
CREATE TABLE hits (page VARCHAR(50) NOT NULL, n INT NOT NULL) ENGINE = MyISAM;
CREATE TABLE pages (name VARCHAR(50) PRIMARY KEY) ENGINE = InnoDB;

-- What writes it without naming it: views (of views), a procedure, a
-- function. And a function that only reads the InnoDB table.
CREATE VIEW hit_view AS SELECT page, n FROM hits;
CREATE VIEW hit_pages AS SELECT page FROM hit_view;
CREATE PROCEDURE record_hit(p VARCHAR(50)) INSERT INTO hits (page, n) VALUES (p, 1);
CREATE FUNCTION count_hit() RETURNS INT MODIFIES SQL DATA
BEGIN
    INSERT INTO hits (page, n) VALUES ('f', 1);
    RETURN 1;
END;
CREATE FUNCTION page_count() RETURNS INT READS SQL DATA
    RETURN (SELECT COUNT(*) FROM pages);
