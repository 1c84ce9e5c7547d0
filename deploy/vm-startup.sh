#!/usr/bin/env bash
# Summary: the training VMs' startup script: make the first image pull fast, say which engine pulls.
#
# Usage: vm-startup.sh   (Compute Engine runs it as root at every boot, from the instance's
#                         startup-script metadata, which create_instance.sh sets from this file)
#
# - installs pigz when unpigz is missing: Docker's classic store inflates gzip layers through
#   unpigz when it is on PATH, and with its slower built-in gzip otherwise (docs/cold-start.md);
# - prints the Docker engine's version (an image with zstd layers needs Docker 23.0 or newer);
# - with HFGPU_BAKE_IMAGE=REF set (bake_vm_image.sh puts that line above this script), pulls REF
#   so that the disk holds its layers, then powers the VM off; when the pull fails it stays up,
#   and its serial console says why. With HFGPU_BAKE_FAMILY=hfgpu-deps-<16 hex> and
#   HFGPU_BAKE_LAYERS=N set too, it powers off only when the first N layers it pulled are the
#   family's (lib/baked.sh's digest): a tag moved since the family was named is never baked under it.
# Lines go to stderr, which Compute Engine copies to the serial console (google_metadata_script_runner).
set -euo pipefail

log() { printf 'hfgpu-startup: %s\n' "$*" >&2; }

# ensure_pigz: unpigz on PATH, installed from the distribution when missing (a stale package
# list or a lock held by the boot's own apt run are retried).
ensure_pigz() {
  if command -v unpigz >/dev/null 2>&1; then
    log "unpigz present: $(command -v unpigz)"
    return 0
  fi
  local apt=(apt-get -o DPkg::Lock::Timeout=300 -y -q)
  if DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends pigz >&2 ||
    { "${apt[@]}" update >&2 && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends pigz >&2; }; then
    log "installed pigz: the first pull inflates gzip layers with unpigz"
  else
    log "warning: could not install pigz: the first pull inflates with Docker's built-in gzip"
  fi
}

# engine_version: the Docker engine's version, once it answers (it may still be starting at boot).
engine_version() {
  local i
  for ((i = 0; i < 60; i++)); do
    docker version --format '{{.Server.Version}}' 2>/dev/null && return 0
    sleep 2
  done
  return 1
}

# bake REF: pull REF's layers onto this disk, then power off (bake_vm_image.sh makes an image of it).
bake() {
  local ref=$1 host=${1%%/*}
  if [[ $host == *.pkg.dev ]]; then
    gcloud auth configure-docker "$host" --quiet >&2 || log "warning: gcloud auth configure-docker $host failed"
  fi
  log "bake: pulling $ref"
  if ! docker pull "$ref" >&2; then
    log "bake: error: pulling $ref failed (see above); not powering off"
    return 1
  fi
  if [[ -n ${HFGPU_BAKE_FAMILY:-} ]]; then
    local got
    got=hfgpu-deps-$(docker image inspect --format '{{range .RootFS.Layers}}{{println .}}{{end}}' "$ref" |
      grep . | head -n "${HFGPU_BAKE_LAYERS:?HFGPU_BAKE_LAYERS is needed with HFGPU_BAKE_FAMILY}" | sha256sum | cut -c1-16)
    if [[ $got != "$HFGPU_BAKE_FAMILY" ]]; then
      log "bake: error: the dependency layers of $ref are $got, not $HFGPU_BAKE_FAMILY (the tag points at" \
        "another image now); not powering off: bake again from a machine that has the image you deploy"
      return 1
    fi
  fi
  log "bake: done: $(docker image inspect --format '{{len .RootFS.Layers}}' "$ref") layers of $ref on this disk"
  sync
  if [[ -d /run/systemd/system ]]; then
    log "bake: powering off"
    systemctl poweroff
  else
    log "bake: not booted with systemd: not powering off"
  fi
}

main() {
  if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    return 0
  fi
  ensure_pigz
  if ! command -v docker >/dev/null 2>&1; then
    log "warning: no docker on PATH: this VM pulls no image (a Deep Learning VM image has it)"
    [[ -z ${HFGPU_BAKE_IMAGE:-} ]] || { log "bake: error: nothing to pull with; not powering off" && return 1; }
    return 0
  fi
  local version
  if version=$(engine_version); then
    log "Docker engine $version (zstd images need 23.0 or newer)"
  else
    log "warning: the Docker engine did not answer within 2 minutes"
  fi
  [[ -z ${HFGPU_BAKE_IMAGE:-} ]] || bake "$HFGPU_BAKE_IMAGE"
}

main "$@"
