#!/usr/bin/env bash
# Summary: bake a Compute Engine image whose disk already holds the training image's layers.
# Usage: bake_vm_image.sh [OPTIONS]     (the options: below, declared in lib/options/bake_vm_image.sh)
#
# Steps: the family name, hfgpu-deps-<digest of the image's dependency layers> (lib/baked.sh);
# the zone (read-only: --zone, or LOCATION's first zone, which is not always -a); nothing to do
# when the project has that family already; a bake VM from the Deep Learning VM
# family whose startup script (deploy/vm-startup.sh) installs pigz, pulls the image and powers the
# VM off; waiting for TERMINATED; an image from its boot disk in that family (images.insert); the
# VM deleted (also when a step fails). create_instance.sh then boots from the family whenever the
# image it deploys has the same dependency layers, and the VM pulls only the code layers above them.
# The last line on stdout is the family. What it saves: docs/cold-start.md.

set -euo pipefail

# shellcheck source=lib/common.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/flags.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/flags.sh"
# shellcheck source=lib/gcp.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/gcp.sh"
# shellcheck source=lib/baked.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/baked.sh"
# shellcheck source=lib/machines.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/machines.sh"
# shellcheck source=lib/options.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/options.sh"
# shellcheck source=lib/options/bake_vm_image.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/options/bake_vm_image.sh"
# shellcheck disable=SC2034 # read by lib/common.sh's log/warn/die
PROG=bake_vm_image.sh

readonly SOURCE_PROJECT=$DLVM_PROJECT
SOURCE_FAMILY=$DLVM_FAMILY
MACHINE_TYPE=e2-standard-4
DISK_SIZE=100GB
DISK_GB=
SERVICE_ACCOUNT=
IMAGE_REF=
TIMEOUT_S=1800
POLL_S=15
FAMILY=
BAKE_VM=
PULL_REF=    # what the bake VM pulls: IMAGE_REF's registry digest when this machine knows it
DEP_LAYERS=  # how many of the image's layers the family covers (the VM checks what it pulled)
VM_CREATED=0
STARTUP=
ZONES=()     # gcp_zones (lib/gcp.sh): ZONE, then its region's other zones (the bake uses ZONE)

# validate: what the option table cannot say (lib/options.sh has checked each value, from flags,
# environment and .env alike), before any gcloud call.
validate() {
  [[ -n $ZONE || $LOCATION == *-* ]] ||
    die "LOCATION $(q "$LOCATION") ($(config_origin LOCATION)) is a multi-region: the bake VM needs a zone;" \
      "pass --zone ZONE, or --location REGION"
  config_default ZONE "${LOCATION}-a" # gcp_zones (lib/gcp.sh) picks the region's first zone
  # shellcheck disable=SC2153 # ZONE: a configuration name of lib/common.sh
  validate_zone "$ZONE" "$(config_origin ZONE)"
  DISK_GB=$(disk_gb "$DISK_SIZE")
  config_default_project
  [[ -n $PROJECT ]] || die "preflight: no project set; pass --project ID or run: gcloud config set project ID"
  validate_project "$PROJECT" "$(config_origin PROJECT)"
  SERVICE_ACCOUNT=${SERVICE_ACCOUNT:-hfgpu-vm@$PROJECT.iam.gserviceaccount.com}
  IMAGE_REF=${IMAGE_REF:-${CONTAINER_NAME:-$(registry_image)}}
  need_cmd docker "the baked family is named after the image's layers, read from the local Docker engine"
  FAMILY=$(baked_family "$IMAGE_REF") ||
    die "image $IMAGE_REF is not on this machine: the baked family is named after its layers;" \
      "build it here (./build_and_push.sh) or docker pull $IMAGE_REF first"
  BAKE_VM=hfgpu-bake-${FAMILY#hfgpu-deps-}
  DEP_LAYERS=$(dep_layer_count "$IMAGE_REF")
  if PULL_REF=$(registry_digest_ref "$IMAGE_REF"); then
    log "the bake VM pulls $PULL_REF (what the registry holds of this machine's $IMAGE_REF)"
  else
    PULL_REF=$IMAGE_REF
    warn "$IMAGE_REF has no registry digest on this machine (not pushed from here, or rebuilt since):" \
      "the bake VM pulls the tag as the registry has it now, and powers off only if its dependency layers" \
      "are $FAMILY's; push it first (./build_and_push.sh) to bake exactly this image"
  fi
}

# baked_already: the project has the family: print its image and succeed.
baked_already() {
  local out
  [[ $DRY_RUN == 1 ]] && return 1
  if out=$(gcloud compute images describe-from-family "$FAMILY" --project "$PROJECT" --format 'value(name)' 2>&1); then
    log "family $FAMILY has image $out already: nothing to bake"
    return 0
  fi
  grep -qE 'was not found|NOT_FOUND' <<<"$out" ||
    gcp_fail "preflight: cannot read image family $FAMILY" "$out" compute.googleapis.com "roles/compute.viewer"
  return 1
}

# check_service_account: the bake VM's identity exists (create_instance.sh makes the default one).
check_service_account() {
  local out
  [[ $DRY_RUN == 1 ]] && return 0
  out=$(gcloud iam service-accounts describe "$SERVICE_ACCOUNT" --project "$PROJECT" --format 'value(email)' 2>&1) &&
    return 0
  grep -qE 'NOT_FOUND|not found|Unknown service account' <<<"$out" &&
    die "service account $SERVICE_ACCOUNT not found: the bake VM pulls the image as it; run ./create_instance.sh" \
      "once (it makes it) or pass --service-account EMAIL"
  gcp_fail "preflight: cannot read service account $SERVICE_ACCOUNT" "$out" iam.googleapis.com "roles/iam.serviceAccountViewer"
}

# startup_script: the bake VM's startup script: deploy/vm-startup.sh with the image to pull.
startup_script() {
  STARTUP=$(mktemp)
  {
    printf '#!/bin/bash\n# bake_vm_image.sh: pull this image; power off when its first %s layers are %s\n' \
      "$DEP_LAYERS" "$FAMILY"
    printf 'export HFGPU_BAKE_IMAGE=%q HFGPU_BAKE_FAMILY=%q HFGPU_BAKE_LAYERS=%q\n' "$PULL_REF" "$FAMILY" "$DEP_LAYERS"
    cat "$HFGPU_ROOT/deploy/vm-startup.sh"
  } >"$STARTUP"
}

create_vm() {
  local create=(gcloud compute instances create "$BAKE_VM" --project "$PROJECT" --zone "$ZONE"
    --machine-type "$MACHINE_TYPE" --image-family "$SOURCE_FAMILY" --image-project "$SOURCE_PROJECT"
    --boot-disk-size "${DISK_GB}GB" --boot-disk-type pd-balanced
    --metadata-from-file "startup-script=$STARTUP"
    --service-account "$SERVICE_ACCOUNT" --scopes cloud-platform --labels "hfgpu-bake=${FAMILY#hfgpu-deps-}")
  local out
  log "bake VM: creating $BAKE_VM in $ZONE ($MACHINE_TYPE, from $SOURCE_FAMILY) to pull $PULL_REF"
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "${create[@]}"
    return 0
  fi
  # From here the VM may exist, even when gcloud fails: a Ctrl-C while gcloud waits for the create
  # (gcloud catches it and exits 1) leaves the VM at Google. So cleanup deletes it whatever the
  # create's outcome (a VM never made is one log line), unless it is someone else's (ALREADY_EXISTS).
  VM_CREATED=1
  if ! out=$("${create[@]}" 2>&1); then
    if grep -qE "$GCP_EXISTS_RE" <<<"$out"; then
      VM_CREATED=0
      die "bake VM: $BAKE_VM exists already (an earlier bake still running, or left over); wait for it or" \
        "delete it: gcloud compute instances delete $BAKE_VM --zone $ZONE --project $PROJECT"
    fi
    gcp_fail "bake VM: creating $BAKE_VM failed" "$out" compute.googleapis.com "roles/compute.instanceAdmin.v1"
  fi
}

# wait_terminated: the bake VM powers itself off when its pull is done.
wait_terminated() {
  local describe=(gcloud compute instances describe "$BAKE_VM" --project "$PROJECT" --zone "$ZONE"
    --format 'value(status)')
  if [[ $DRY_RUN == 1 ]]; then
    printf '# every %ss until it prints TERMINATED (at most %ss):\n' "$POLL_S" "$TIMEOUT_S"
    quote_cmd "${describe[@]}"
    return 0
  fi
  local deadline=$((SECONDS + TIMEOUT_S)) status=''
  log "bake VM: waiting for it to pull the image and power off (at most ${TIMEOUT_S}s)"
  while ((SECONDS < deadline)); do
    status=$("${describe[@]}" 2>&1) ||
      gcp_fail "bake VM: cannot read the state of $BAKE_VM" "$status" compute.googleapis.com "roles/compute.viewer"
    [[ $status == TERMINATED ]] && return 0
    sleep "$POLL_S"
  done
  die "bake VM: $BAKE_VM did not power off within ${TIMEOUT_S}s (state $status); its pull failed or is slow:" \
    "see gcloud compute instances get-serial-port-output $BAKE_VM --zone $ZONE --project $PROJECT" \
    "(lines 'hfgpu-startup:'); the VM is deleted now"
}

make_image() {
  local name
  name=$FAMILY-$(date -u +%Y%m%d%H%M%S)
  local create=(gcloud compute images create "$name" --project "$PROJECT" --source-disk "$BAKE_VM"
    --source-disk-zone "$ZONE" --family "$FAMILY"
    --description "Deep Learning VM $SOURCE_FAMILY with the layers of $IMAGE_REF (bake_vm_image.sh)")
  log "image: $name in family $FAMILY, from the disk of $BAKE_VM"
  run "${create[@]}" >&2 || die "image: creating $name failed (see above); the bake VM is deleted now"
}

delete_vm() {
  ((VM_CREATED)) || return 0
  VM_CREATED=0
  log "bake VM: deleting $BAKE_VM"
  local out
  out=$(gcloud compute instances delete "$BAKE_VM" --project "$PROJECT" --zone "$ZONE" --quiet 2>&1) && return 0
  if grep -qE "$GCP_NOT_FOUND_RE" <<<"$out"; then
    log "bake VM: $BAKE_VM was never made (stopped during its create)"
    return 0
  fi
  printf '%s\n' "$out" >&2
  warn "deleting $BAKE_VM failed; delete it yourself: gcloud compute instances delete $BAKE_VM --zone $ZONE"
}

cleanup() {
  delete_vm
  [[ -z $STARTUP ]] || rm -f "$STARTUP"
}

main() {
  opt_help_first "$@"
  config_init
  opt_parse "$@"
  ((${#OPT_ARGS[@]} + ${#OPT_REST[@]} == 0)) ||
    die "unexpected argument $(q "${OPT_ARGS[0]:-${OPT_REST[0]:-}}"): bake_vm_image.sh takes options only; see --help"
  opt_check_config
  validate
  log "preflight: checking gcloud"
  gcp_preflight
  gcp_zones # also under --dry-run (read-only): the commands it prints name the zone they would use
  log "family: $FAMILY (the dependency layers of $IMAGE_REF)"
  if baked_already; then
    printf '%s\n' "$FAMILY"
    return 0
  fi
  check_service_account
  trap cleanup EXIT
  # Ctrl-C or a kill: exit through the EXIT trap, which deletes the bake VM.
  trap 'exit 130' INT
  trap 'exit 143' TERM
  startup_script
  create_vm
  wait_terminated
  make_image
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd gcloud compute instances delete "$BAKE_VM" --project "$PROJECT" --zone "$ZONE" --quiet
    return 0
  fi
  delete_vm
  log "done: create_instance.sh boots from family $FAMILY for images with these dependency layers"
  printf '%s\n' "$FAMILY"
}

main "$@"
