#!/usr/bin/env bash
# Summary: make the local stand-in for the CUDA base image, if it is missing.
#
# Usage: tests/make-test-base.sh [IMAGE]     (default hfgpu-test-base:bookworm)
#
# No registry is reachable on the test machines, so `nvidia/cuda` cannot be pulled.
# The tests build the real Dockerfile against a Debian 12 root file system made
# with debootstrap and imported into the engine. Needs root, debootstrap and a
# running Docker engine; takes about a minute the first time.
set -euo pipefail

readonly PROG=make-test-base
readonly MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

main() {
  if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    return 0
  fi
  local image=${1:-${HFGPU_TEST_BASE:-hfgpu-test-base:bookworm}}
  local docker=${HFGPU_DOCKER:-docker}
  [[ -x /usr/bin/docker && -z ${HFGPU_DOCKER:-} ]] && docker=/usr/bin/docker
  "$docker" info >/dev/null 2>&1 || die "Docker engine not reachable; start it (dockerd) or run .ci/run"
  if "$docker" image inspect "$image" >/dev/null 2>&1; then
    return 0
  fi
  command -v debootstrap >/dev/null || die "debootstrap not found; apt-get install -y debootstrap"
  [[ $(id -u) == 0 ]] || die "debootstrap needs root; run as root or import the base image once by hand"
  local rootfs
  rootfs=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: the path is fixed.
  trap "rm -rf '$rootfs'" EXIT
  printf '%s: debootstrap bookworm into %s\n' "$PROG" "$rootfs" >&2
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >/dev/null
  tar -C "$rootfs" -c . | "$docker" import - "$image" >/dev/null
  printf '%s: imported %s\n' "$PROG" "$image" >&2
}

main "$@"
