-- The migrations of another checkout; see ../../a/server/migrations.
CREATE TABLE checkout_b (id BIGSERIAL PRIMARY KEY);
