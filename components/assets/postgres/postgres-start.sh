#!/usr/bin/env bash
# picluster's PostgreSQL start, run instead of the official image's entrypoint:
#   bash postgres-start.sh postgres [options]
#
# PostgreSQL reads POSTGRES_PASSWORD[_FILE] only when it creates the data directory, so a rotated
# password would never reach an existing database. On an existing one, this script first starts
# the entrypoint's own socket-only temporary server, has pg-password.sh (next to this file) make
# the role's password the one in POSTGRES_PASSWORD_FILE, stops it, then hands over to the
# unchanged entrypoint, which execs postgres as PID 1 (so signals and exit status are its own).
# No TCP client ever sees the old password once the new container runs.
#
# It sources the entrypoint, as docker-library/postgres supports, for the same environment
# handling, directory setup, root-to-postgres step and temporary server. No `set -u`: the
# sourced entrypoint is not written for it (its own header says so).
set -Eeo pipefail

here=$(dirname -- "${BASH_SOURCE[0]}")
if [ "$#" -eq 0 ]; then
    set -- postgres
fi
# docker_setup_env turns POSTGRES_PASSWORD_FILE into POSTGRES_PASSWORD: keep the file's path,
# across the re-exec as the postgres user too.
export PICLUSTER_PASSWORD_FILE="${PICLUSTER_PASSWORD_FILE:-${POSTGRES_PASSWORD_FILE:?postgres-start: POSTGRES_PASSWORD_FILE must name the password file}}"

# shellcheck source=/dev/null
source docker-entrypoint.sh
docker_setup_env
docker_create_db_directories
if [ "$(id -u)" = 0 ]; then
    exec gosu postgres bash "${BASH_SOURCE[0]}" "$@"
fi

if [ -n "$DATABASE_ALREADY_EXISTS" ]; then
    docker_temp_server_start "$@"
    if ! PGHOST='' PGHOSTADDR='' PGUSER="$POSTGRES_USER" sh "$here/pg-password.sh" "$POSTGRES_USER" "$PICLUSTER_PASSWORD_FILE"; then
        docker_temp_server_stop
        echo "postgres-start: could not set the password of $POSTGRES_USER" >&2
        exit 1
    fi
    docker_temp_server_stop
fi
unset PICLUSTER_PASSWORD_FILE
exec docker-entrypoint.sh "$@"
