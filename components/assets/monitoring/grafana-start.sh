#!/bin/sh
# picluster's Grafana start, run instead of the official image's entrypoint (/run.sh):
#   sh grafana-start.sh [grafana server options]
#
# Grafana uses GF_SECURITY_ADMIN_PASSWORD(__FILE) only when it creates its database, so a rotated
# password would never reach an existing one. When the database exists, this resets the admin
# user's password from the same file first (the password goes to `grafana cli` on stdin, never
# on its command line), then hands over to /run.sh, which execs the server as before.
set -eu

password_file=${GF_SECURITY_ADMIN_PASSWORD__FILE:?grafana-start: GF_SECURITY_ADMIN_PASSWORD__FILE must name the password file}
home=${GF_PATHS_HOME:-/usr/share/grafana}
config=${GF_PATHS_CONFIG:-/etc/grafana/grafana.ini}
database=${GF_PATHS_DATA:-/var/lib/grafana}/grafana.db

if [ -s "$database" ]; then
    # `grafana cli` loads the same config as the server (GF_PATHS_DATA and the other GF_*
    # variables included), so it opens the same database.
    grafana cli --homepath "$home" --config "$config" \
        admin reset-admin-password --password-from-stdin <"$password_file"
    echo "grafana-start: admin password set from $password_file"
else
    echo "grafana-start: no database yet; Grafana creates the admin from $password_file"
fi
exec /run.sh "$@"
