#!/bin/sh
# Run once by the postgres image's entrypoint on an empty data directory, as the superuser
# (POSTGRES_USER=postgres, password from db_admin_password; the entrypoint exports PGPASSWORD).
# Creates the role the cityanchor services connect as: a login WITHOUT superuser, createdb,
# createrole or replication rights that owns the cityanchor database and its public schema, so
# `cityanchor db migrate` works and `COPY ... TO PROGRAM` does not. Its password comes from the
# db_password secret (the one in secrets/cityanchor.env's DSN) and is read by psql itself
# (\set with backquotes), so it never appears on a command line.
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\set pw `cat /run/secrets/db_password`
CREATE ROLE cityanchor LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'pw';
CREATE DATABASE cityanchor OWNER cityanchor;
REVOKE ALL ON DATABASE cityanchor FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE cityanchor TO cityanchor;
\connect cityanchor
ALTER SCHEMA public OWNER TO cityanchor;
SQL
