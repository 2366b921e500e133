#!/bin/sh
# Test double's copy of upstream's entrypoint, verbatim but for this header: nodejs/docker-node
# docker-entrypoint.sh (as of commit 3101ce6b, the one every 22/alpine* image copies). Used by
# tests/integration/baseimages.py.
set -e

# Run command with node if the first argument contains a "-" or is not a system command. The last
# part inside the "{}" is a workaround for the following bug in ash/dash:
# https://bugs.debian.org/cgi-bin/bugreport.cgi?bug=874264
if [ "${1#-}" != "${1}" ] || [ -z "$(command -v "${1}")" ] || { [ -f "${1}" ] && ! [ -x "${1}" ]; }; then
  set -- node "$@"
fi

exec "$@"
