CREATE TABLE member (
    member_id BIGINT PRIMARY KEY,
    handle TEXT NOT NULL UNIQUE
);

CREATE TABLE thread (
    thread_id BIGINT PRIMARY KEY,
    member_id BIGINT NOT NULL REFERENCES member (member_id),
    title TEXT NOT NULL,
    posted_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE reply (
    reply_id BIGINT PRIMARY KEY,
    thread_id BIGINT NOT NULL REFERENCES thread (thread_id),
    member_id BIGINT NOT NULL REFERENCES member (member_id),
    body TEXT NOT NULL,
    posted_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX reply_thread_idx ON reply (thread_id, posted_at);
