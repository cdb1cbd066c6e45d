-- schema.sql - the sample application schema, with Row-Level Security.
--
-- Run it AS THE SERVICE PRINCIPAL's Postgres role (the app's own identity,
-- `lakebase-sp` in the local stack, the SP's client id in Lakebase), so the
-- SP owns the schema and the table:
--   Lakebase:     psql "host=<instance> dbname=databricks_postgres user=<sp client id> sslmode=verify-full" -f sql/schema.sql
--   local stack:  scripts/stack.sh does it (as postgres, after SET ROLE "lakebase-sp").
-- It is idempotent: safe to run again on an existing database.
--
-- Who sees what:
--   * A user route runs on a connection logged in as the user, so
--     current_user is the user's email and the policy below shows them only
--     their rows and lets them write only rows they own.
--   * The owner of a table bypasses its RLS policies (unless FORCE ROW LEVEL
--     SECURITY), which is why service-principal routes see every row.
--   * Superusers, and roles with BYPASSRLS, bypass RLS too. Never grant a
--     user role databricks_superuser (or SUPERUSER): its queries would see
--     everyone's rows.

\set ON_ERROR_STOP on
-- Quiet the NOTICEs of the IF [NOT] EXISTS forms on a re-run.
SET client_min_messages = warning;

CREATE SCHEMA IF NOT EXISTS app;

CREATE TABLE IF NOT EXISTS app.todos (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    title       text        NOT NULL,
    done        boolean     NOT NULL DEFAULT false,
    -- Filled from the login role, so an INSERT by a user cannot claim
    -- another owner (the WITH CHECK below refuses it anyway).
    owner       text        NOT NULL DEFAULT current_user,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The policy's lookup column. current_user is of type name, whose collation
-- is "C": the policy compares owner in that collation, so only an index in
-- "C" serves it (with the default collation every user query would scan
-- the whole table; see BENCHMARKS.md).
DROP INDEX IF EXISTS app.todos_owner_idx;
CREATE INDEX IF NOT EXISTS todos_owner_c_idx ON app.todos (owner COLLATE "C");

ALTER TABLE app.todos ENABLE ROW LEVEL SECURITY;

-- USING filters the rows a user can see, update or delete; WITH CHECK
-- refuses inserted or updated rows the user would not own (SQLSTATE 42501,
-- which the worker answers with 403). FOR ALL covers every command.
DROP POLICY IF EXISTS todos_owner ON app.todos;
CREATE POLICY todos_owner ON app.todos
    FOR ALL
    TO PUBLIC
    USING (owner = current_user)
    WITH CHECK (owner = current_user);

-- Grants to PUBLIC rather than per user: the RLS policy, not the grant, is
-- what separates users, and any role that can log in (a Lakebase role
-- created for a user, see create_user_role.sql) then works without a
-- per-user GRANT. For a stricter setup, REVOKE these from PUBLIC and grant
-- them to a group role that user roles are members of.
GRANT USAGE ON SCHEMA app TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON app.todos TO PUBLIC;
