-- Every write to `users` leaves a row here, in the same transaction as the
-- write itself. `user_id` has no foreign key so that deletions stay logged.
CREATE TABLE audit_log (
    id         BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    actor      TEXT        NOT NULL,
    action     VARCHAR(32) NOT NULL
               CHECK (action IN ('user.create', 'user.update', 'user.delete', 'user.bulk_create')),
    user_id    BIGINT,
    detail     JSON        NOT NULL DEFAULT ('{}'),
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
);

CREATE INDEX audit_log_user_id_idx ON audit_log (user_id);
CREATE INDEX audit_log_action_created_at_idx ON audit_log (action, created_at);
