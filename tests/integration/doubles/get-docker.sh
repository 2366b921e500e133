#!/bin/sh
# TEST DOUBLE for Docker's convenience installer (https://get.docker.com), used only by the
# integration tests: get.docker.com is not reachable from the test machines. It does not install
# Docker. It records each call (arguments and a few environment values) in
# /var/log/picluster-test/get-docker-double.log and creates what the real installer leaves behind
# that picluster's docker.sh looks at: a `docker` command (a stub), a `docker` group and an
# enabled, running `docker.service` (which only sleeps).
set -eu
log=/var/log/picluster-test/get-docker-double.log
mkdir -p "${log%/*}"
echo "called uid=$(id -u) args=[$*] DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-} VERSION=${VERSION:-} CHANNEL=${CHANNEL:-}" >>"$log"

cat >/usr/bin/docker <<'STUB'
#!/bin/sh
# TEST DOUBLE: stub docker CLI created by tests/integration/doubles/get-docker.sh
if [ "${1:-}" = "--version" ] || [ "${1:-}" = "version" ]; then
    echo "Docker version 0.0.0-test-double, build none"
    exit 0
fi
echo "docker (test double): $*" >&2
exit 0
STUB
chmod 0755 /usr/bin/docker

getent group docker >/dev/null || groupadd --system docker

cat >/lib/systemd/system/docker.service <<'UNIT'
[Unit]
Description=Docker Application Container Engine (TEST DOUBLE: sleeps only)

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now docker.service
echo "test double: docker installed"
