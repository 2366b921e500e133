#!/usr/bin/env bash
# Test double of the official postgres image's docker-entrypoint.sh, for a Debian postgresql.
# It offers what picluster relies on, with the same names and effects as upstream
# (docker-library/postgres, 17/alpine*/docker-entrypoint.sh): sourcing defines docker_setup_env
# (password file -> POSTGRES_PASSWORD, POSTGRES_DB defaulting to the user,
# DATABASE_ALREADY_EXISTS), docker_create_db_directories and a socket-only temporary server;
# running it with `postgres` as first argument (as upstream's _main) re-runs itself as the
# postgres user when root (gosu), initializes an empty data directory (initdb with the password,
# password authentication for TCP from any host, then POSTGRES_DB created) and execs its
# arguments; any other command is just exec'd. Not a copy of upstream: a stand-in written for
# the tests (used directly by test_postgres_password.py and as the entrypoint of the local
# postgres image, tests/integration/pgimage.py).
set -Eeo pipefail

docker_setup_env() {
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
        POSTGRES_PASSWORD=$(<"$POSTGRES_PASSWORD_FILE")
        export POSTGRES_PASSWORD
        unset POSTGRES_PASSWORD_FILE
    fi
    export POSTGRES_USER="${POSTGRES_USER:-postgres}"
    export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
    DATABASE_ALREADY_EXISTS=
    if [ -s "$PGDATA/PG_VERSION" ]; then
        DATABASE_ALREADY_EXISTS=true
    fi
}

docker_create_db_directories() {
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA" || :
    mkdir -p /var/run/postgresql 2>/dev/null || :
    chmod 3775 /var/run/postgresql 2>/dev/null || :
    if [ "$(id -u)" = 0 ]; then
        find "$PGDATA" \! -user postgres -exec chown postgres '{}' +
        find /var/run/postgresql \! -user postgres -exec chown postgres '{}' +
    fi
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

_double_setup_db() {
    if [ "$POSTGRES_DB" != postgres ]; then
        PGHOST='' PGHOSTADDR='' psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password \
            --no-psqlrc --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
}

_double_main() {
    if [ "$1" = postgres ]; then
        docker_setup_env
        docker_create_db_directories
        if [ "$(id -u)" = 0 ]; then
            exec gosu postgres "${BASH_SOURCE[0]}" "$@"
        fi
        if [ -z "$DATABASE_ALREADY_EXISTS" ]; then
            # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of options, as upstream.
            initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
                ${POSTGRES_INITDB_ARGS:-}
            printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
            docker_temp_server_start "$@"
            _double_setup_db
            docker_temp_server_stop
        fi
    fi
    exec "$@"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    _double_main "$@"
fi
