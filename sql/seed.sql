-- seed.sql - sample rows for the todos table (sql/schema.sql).
--
-- Run as the service principal (the table's owner, which bypasses RLS and
-- so may insert rows owned by anyone). Idempotent: the rows have fixed ids
-- and are reset to these values on every run; other rows are left alone.
-- Fixed ids and created_at make test answers deterministic.

\set ON_ERROR_STOP on

INSERT INTO app.todos (id, title, done, owner, created_at) VALUES
    ('00000000-0000-4000-8000-000000000001', 'alice: buy milk', false, 'alice@example.com', '2024-01-01 00:00:01+00'),
    ('00000000-0000-4000-8000-000000000002', 'alice: call mum', true,  'alice@example.com', '2024-01-01 00:00:02+00'),
    ('00000000-0000-4000-8000-000000000003', 'bob: fix bike',   false, 'bob@example.com',   '2024-01-01 00:00:03+00')
ON CONFLICT (id) DO UPDATE
    SET title = EXCLUDED.title,
        done = EXCLUDED.done,
        owner = EXCLUDED.owner,
        created_at = EXCLUDED.created_at;
