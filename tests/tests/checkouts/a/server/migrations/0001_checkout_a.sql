-- The migrations of one checkout; ../../b/server/migrations ends in the same
-- two path components but holds other migrations (outdated_templates.rs).
CREATE TABLE checkout_a (id BIGSERIAL PRIMARY KEY);
