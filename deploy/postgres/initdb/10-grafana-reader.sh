#!/bin/sh
# Runs once, when the postgres container initialises its data directory: the login Grafana
# uses. It may only read (role tierline_read, granted by migration 0010).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v pw="${GRAFANA_DB_PASSWORD:-grafana}" <<'SQL'
CREATE ROLE tierline_read NOLOGIN;
CREATE ROLE grafana LOGIN PASSWORD :'pw' IN ROLE tierline_read;
SQL
