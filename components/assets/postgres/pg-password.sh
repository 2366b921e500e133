#!/bin/sh
# picluster: make a PostgreSQL role's password the one in a file, and only when it differs.
#
# Usage: pg-password.sh ROLE PASSWORD_FILE
# Connects with libpq's defaults (PGHOST, PGPORT...; the unix socket when unset) as $PGUSER, else as
# ROLE itself, which must be a superuser (POSTGRES_USER is one in the official image) to read the
# stored SCRAM verifier. The password reaches psql only from the file (never argv, env or a log):
# the server compares it with the stored verifier and sets it only when they differ.
# Prints one line: "changed" or "unchanged"; fails when the role does not exist.
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: pg-password.sh ROLE PASSWORD_FILE" >&2
    exit 2
fi
role=$1
file=$2
if [ ! -r "$file" ]; then
    echo "pg-password: cannot read the password file $file" >&2
    exit 1
fi

result=$(psql --no-psqlrc --quiet --tuples-only --no-align --no-password \
    --set=ON_ERROR_STOP=1 --set=VERBOSITY=terse --set=role="$role" --set=file="$file" \
    --dbname="${PGDATABASE:-postgres}" --username="${PGUSER:-$role}" <<'SQL'
-- The password must not reach the server's log, whatever the server's settings.
SET log_statement = 'none';
SET log_min_error_statement = 'panic';
SET log_min_duration_statement = -1;
SET password_encryption = 'scram-sha-256';

-- psql strips the one trailing newline of the backquoted output, as secrets are written without.
\set pw `cat -- :'file'`

-- HMAC-SHA-256 (RFC 2104) from the built-in sha256().
CREATE FUNCTION pg_temp.hmac(key bytea, message bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    block bytea;
    inner_pad bytea;
    outer_pad bytea;
BEGIN
    IF length(key) > 64 THEN
        key := sha256(key);
    END IF;
    block := key || decode(repeat('00', 64 - length(key)), 'hex');
    inner_pad := block;
    outer_pad := block;
    FOR i IN 0..63 LOOP
        inner_pad := set_byte(inner_pad, i, get_byte(block, i) # 54);
        outer_pad := set_byte(outer_pad, i, get_byte(block, i) # 92);
    END LOOP;
    RETURN sha256(outer_pad || sha256(inner_pad || message));
END
$$;

-- Whether `password` matches a stored "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
-- verifier (RFC 5802/7677: SaltedPassword is PBKDF2-HMAC-SHA-256). A password that SASLprep would
-- change (non-ASCII) never matches and is simply set again: safe, only not silent.
CREATE FUNCTION pg_temp.scram_matches(verifier text, password text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    parts text[];
    secret bytea := convert_to(password, 'UTF8');
    u bytea;
    acc bit(256);
    salted bytea := decode(repeat('00', 32), 'hex');
BEGIN
    parts := regexp_match(verifier, '^SCRAM-SHA-256\$([0-9]+):([^$]+)\$([^:]+):(.+)$');
    IF parts IS NULL THEN
        RETURN false;  -- no password, or an md5 one: set a SCRAM one
    END IF;
    u := pg_temp.hmac(secret, decode(parts[2], 'base64') || '\x00000001'::bytea);
    acc := ('x' || encode(u, 'hex'))::bit(256);
    FOR i IN 2..parts[1]::int LOOP
        u := pg_temp.hmac(secret, u);
        acc := acc # ('x' || encode(u, 'hex'))::bit(256);
    END LOOP;
    FOR i IN 0..31 LOOP
        salted := set_byte(salted, i, substring(acc FROM i * 8 + 1 FOR 8)::int);
    END LOOP;
    RETURN sha256(pg_temp.hmac(salted, 'Client Key'::bytea)) = decode(parts[3], 'base64')
        AND pg_temp.hmac(salted, 'Server Key'::bytea) = decode(parts[4], 'base64');
END
$$;

SELECT count(*) = 1 AS role_exists FROM pg_roles WHERE rolname = :'role' \gset
\if :role_exists
    SELECT coalesce(pg_temp.scram_matches(rolpassword, :'pw'), false) AS unchanged
        FROM pg_authid WHERE rolname = :'role' \gset
    \if :unchanged
        \echo unchanged
    \else
        ALTER ROLE :"role" PASSWORD :'pw';
        \echo changed
    \endif
\else
    \echo missing
\endif
SQL
)

case $result in
changed) echo "pg-password: set a new password for role $role from $file" ;;
unchanged) echo "pg-password: the password of role $role is already the one in $file" ;;
missing)
    echo "pg-password: role $role does not exist" >&2
    exit 1
    ;;
*)
    echo "pg-password: unexpected answer from psql" >&2
    exit 1
    ;;
esac
