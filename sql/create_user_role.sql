-- create_user_role.sql - give a user a Postgres role, so lakebase-fcgi can
-- log in as them for "on-behalf-of-user" routes (their email is the role).
--
-- A user without a role gets 403 role_missing from the worker: Postgres
-- refuses the login (SQLSTATE 28000/28P01) even with a valid credential.
--
-- Usage (psql variables; idempotent, an existing role is left as it is):
--
--   Lakebase, logged in as a Databricks identity (not a native password
--   role) that has CREATE and CREATE ROLE on the database, e.g. the project
--   owner, with an OAuth credential as the password:
--     psql "host=<endpoint host> dbname=databricks_postgres user=<you> sslmode=verify-full" \
--          -v email=alice@example.com -f sql/create_user_role.sql
--
--   The local test stack (plain Postgres, no databricks_auth extension;
--   the workspace emulator sets the role's password when it mints a
--   credential), as a superuser:
--     psql ... -v email=alice@example.com -v local=1 -f sql/create_user_role.sql
--
-- The same without SQL, with the Databricks CLI (Lakebase Autoscaling):
--
--   databricks postgres create-role "projects/{project}/branches/{branch}" \
--     --json '{"spec": {"identity_type": "USER", "postgres_role": "user@example.com"}}'
--
-- Whichever way: never make a user role a member of databricks_superuser
-- (membership_roles DATABRICKS_SUPERUSER in the API), nor give it BYPASSRLS
-- or SUPERUSER. Those bypass Row-Level Security and the user would see
-- every row.

\set ON_ERROR_STOP on

\if :{?email}
\else
  \echo 'usage: psql ... -v email=user@example.com [-v local=1] -f sql/create_user_role.sql'
  \quit
\endif

\if :{?local}
  -- Local stack: a plain login role without a password (until the
  -- emulator sets one). Quoted: an email is not a plain identifier.
  SELECT format('CREATE ROLE %I LOGIN', :'email')
   WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'email')
  \gexec
\else
  -- Lakebase: an OAuth role bound to the Databricks user of that email,
  -- which logs in with credentials minted by the workspace API. The
  -- extension is per database.
  CREATE EXTENSION IF NOT EXISTS databricks_auth;
  SELECT databricks_create_role(:'email', 'USER')
   WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'email');
\endif

-- Connecting needs CONNECT on the database (PUBLIC usually has it).
GRANT CONNECT ON DATABASE :"DBNAME" TO :"email";

-- Access to the data: sql/schema.sql grants USAGE on schema app and
-- SELECT/INSERT/UPDATE/DELETE on app.todos to PUBLIC, and the RLS policy
-- limits each user to their own rows, so nothing more is needed here. If
-- you revoked those grants from PUBLIC, grant them per role instead:
--   GRANT USAGE ON SCHEMA app TO :"email";
--   GRANT SELECT, INSERT, UPDATE, DELETE ON app.todos TO :"email";
