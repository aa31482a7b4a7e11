-- Every write to `users` leaves a row here, in the same transaction as the
-- write itself. `user_id` has no foreign key so that deletions stay logged.
CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL
               CHECK (action IN ('user.create', 'user.update', 'user.delete', 'user.bulk_create')),
    user_id    INTEGER,
    detail     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail)),
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX audit_log_user_id_idx ON audit_log (user_id);
CREATE INDEX audit_log_action_created_at_idx ON audit_log (action, created_at);
