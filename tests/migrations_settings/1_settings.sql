-- Settings of the database itself, as some projects' migrations set them.
DO $$ BEGIN
  EXECUTE format('ALTER DATABASE %I SET work_mem TO %L', current_database(), '5MB');
  EXECUTE format('ALTER DATABASE %I SET app.tenant TO %L', current_database(), 'acme');
  EXECUTE format('ALTER DATABASE %I SET search_path TO app, public', current_database());
  -- And the database's own comment, privileges and connection limit.
  EXECUTE format('COMMENT ON DATABASE %I IS %L', current_database(), 'the app''s database');
  EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
  EXECUTE format('ALTER DATABASE %I CONNECTION LIMIT 250', current_database());
  -- A server-side guard against sessions left idle in a transaction.
  EXECUTE format('ALTER DATABASE %I SET idle_in_transaction_session_timeout TO %L', current_database(), '1s');
END $$;
CREATE SCHEMA app;
CREATE TABLE app.tenants (name TEXT PRIMARY KEY);
