#!/usr/bin/env bash
# Summary: run a build command that trusts an extra CA bundle, if the build was given one.
#
# Usage: with-build-ca COMMAND [ARGS...]
#
# The bundle comes from the BuildKit secret "ca_bundle" (docker build --secret
# id=ca_bundle,src=FILE), mounted only for the RUN that uses it. It is joined to
# the system roots in a temporary file that is removed before the RUN ends, so it
# is in no layer, no build argument and no `docker history` line.
set -euo pipefail

readonly SECRET=/run/secrets/ca_bundle
readonly SYSTEM_ROOTS=/etc/ssl/certs/ca-certificates.crt

main() {
  if [[ $# -eq 0 || $1 == -h || $1 == --help ]]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    return 0
  fi
  if [[ -s $SECRET ]]; then
    local bundle
    bundle=$(mktemp)
    # shellcheck disable=SC2064 # expand now: the path is fixed.
    trap "rm -f '$bundle'" EXIT
    cat "$SYSTEM_ROOTS" "$SECRET" >"$bundle"
    export PIP_CERT="$bundle" SSL_CERT_FILE="$bundle" REQUESTS_CA_BUNDLE="$bundle"
  fi
  "$@"
}

main "$@"
