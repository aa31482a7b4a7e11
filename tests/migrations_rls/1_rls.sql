-- Row level security the way apps set it up: a policy that reads who is
-- asking from a setting, and a function that sets it for the transaction.
CREATE TABLE documents (
    id BIGSERIAL PRIMARY KEY,
    owner_id BIGINT NOT NULL,
    title TEXT NOT NULL
);

CREATE FUNCTION app_set_user(uid bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('app.user_id', uid::text, true);
END
$$;

-- Session-wide: stays after the transaction, as in production.
CREATE FUNCTION app_login(uid bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('app.user_id', uid::text, false);
END
$$;

-- Through another function, and from a trigger.
CREATE FUNCTION app_as_admin() RETURNS void LANGUAGE sql AS $$
    SELECT app_set_user(0)
$$;

CREATE TABLE marks (id BIGINT PRIMARY KEY);

CREATE FUNCTION mark_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('app.marked', 'yes', true);
    RETURN NEW;
END
$$;

CREATE TRIGGER marks_mark BEFORE INSERT ON marks FOR EACH ROW EXECUTE FUNCTION mark_row();
