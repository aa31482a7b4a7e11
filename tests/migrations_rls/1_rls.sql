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
