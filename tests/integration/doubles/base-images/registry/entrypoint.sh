#!/bin/sh
# Test double's copy of upstream's entrypoint, verbatim but for this header:
# distribution/distribution-library-image docker-entrypoint.sh as of commit aa54086 (the 2.8.x
# image). Used by tests/integration/baseimages.py.

set -e

case "$1" in
    *.yaml|*.yml) set -- registry serve "$@" ;;
    serve|garbage-collect|help|-*) set -- registry "$@" ;;
esac

exec "$@"
