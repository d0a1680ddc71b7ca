#!/usr/bin/env bash
# One database and one role per service, plus Temporal's two, created on the first start of the
# PostgreSQL volume (docker-entrypoint-initdb.d). Each database is owned by its own role and closed
# to PUBLIC, so that no service can connect to another's database, let alone read its tables.
# Passwords come from the environment (.env), never from this file.
set -euo pipefail

create() {  # create <role> <password> <database>...
  local role=$1 password=$2
  shift 2
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v role="$role" -v password="$password" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
SQL
  for database in "$@"; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
      -v role="$role" -v database="$database" <<'SQL'
CREATE DATABASE :"database" OWNER :"role";
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"database" TO :"role";
SQL
    # PostgreSQL < 15 lets every role create objects in public; close that too.
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$database" -v role="$role" <<'SQL'
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
ALTER SCHEMA public OWNER TO :"role";
SQL
  done
}

create users "${USERS_DB_PASSWORD:?}" users
create inventory "${INVENTORY_DB_PASSWORD:?}" inventory
create payments "${PAYMENTS_DB_PASSWORD:?}" payments
create orders "${ORDERS_DB_PASSWORD:?}" orders
create notifications "${NOTIFICATIONS_DB_PASSWORD:?}" notifications
create temporal "${TEMPORAL_DB_PASSWORD:?}" temporal temporal_visibility
