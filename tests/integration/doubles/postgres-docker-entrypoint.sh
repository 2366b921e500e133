#!/usr/bin/env bash
# Test double of the official postgres image's docker-entrypoint.sh, for a Debian postgresql.
# It offers what postgres-start.sh relies on, with the same names and effects: sourcing defines
# docker_setup_env (password file -> POSTGRES_PASSWORD, DATABASE_ALREADY_EXISTS),
# docker_create_db_directories and a socket-only temporary server; running it initializes an
# empty data directory (initdb with the password, then password authentication for TCP from
# any host) and execs its arguments. Not a copy of upstream: a stand-in written for the tests.
set -Eeo pipefail

docker_setup_env() {
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
        POSTGRES_PASSWORD=$(<"$POSTGRES_PASSWORD_FILE")
        export POSTGRES_PASSWORD
        unset POSTGRES_PASSWORD_FILE
    fi
    export POSTGRES_USER="${POSTGRES_USER:-postgres}"
    DATABASE_ALREADY_EXISTS=
    if [ -s "$PGDATA/PG_VERSION" ]; then
        DATABASE_ALREADY_EXISTS=true
    fi
}

docker_create_db_directories() {
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"
}

docker_temp_server_start() {
    if [ "$1" = postgres ]; then
        shift
    fi
    pg_ctl -D "$PGDATA" -o "$(printf '%q ' "$@" -c listen_addresses='' -p "${PGPORT:-5432}")" -w start
}

docker_temp_server_stop() {
    pg_ctl -D "$PGDATA" -m fast -w stop
}

_double_main() {
    docker_setup_env
    docker_create_db_directories
    if [ -z "$DATABASE_ALREADY_EXISTS" ]; then
        # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of options, as upstream.
        initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
            ${POSTGRES_INITDB_ARGS:-}
        printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    fi
    exec "$@"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    _double_main "$@"
fi
