#!/usr/bin/env bash
# Summary: create a Compute Engine GPU VM ready for launch_training.sh (idempotent).
# Usage: create_instance.sh [--vm-name NAME] [--zone ZONE] [--zones Z1,Z2,...] [--machine-type TYPE]
#                           [--accelerator TYPE,count=N] [--spot | --flex-start | --on-demand |
#                           --reservation NAME] [--max-run-duration DURATION] [--boot-disk-size SIZE]
#                           [--service-account EMAIL] [--checkpoint-bucket gs://BUCKET/PATH]
#                           [--image-family FAMILY] [--image REF] [--project ID] [--location REGION]
#                           [--repo NAME] [--image-name NAME] [--tag TAG] [--dry-run] [-h|--help]
#
#   --vm-name NAME          VM name (env VM_NAME or INSTANCE_NAME; default hfgpu-vm, or an existing
#                           gpu-transformers-vm, the old default)
#   --zone ZONE             first zone to try (env ZONE; default LOCATION-a, e.g. us-east4-a)
#   --zones Z1,Z2,...       zones to try, in this order, when a zone is out of GPUs (default: ZONE,
#                           then the region's other zones in alphabetical order)
#   --machine-type TYPE     default a3-highgpu-1g (1 x H100 80GB; Spot or Flex-start only, so the
#                           default VM is Spot); on demand and cheaper: g2-standard-8 (1 x L4)
#   --accelerator T,count=N GPUs for N1 types only (e.g. nvidia-tesla-t4,count=1); A2/A3/A4/G2 types
#                           come with their GPUs
#   --spot                  Spot VM: stopped (not deleted) when reclaimed, about 30 s notice;
#                           launch_training.sh --restart-on-preemption resumes
#   --flex-start            Flex-start (Dynamic Workload Scheduler): runs up to --max-run-duration
#                           (default 7d, at most 7d), then is deleted; no preemption meanwhile;
#                           A2/A3/A4/G2 types only; needs gcloud's alpha component
#   --on-demand             a standard VM; refused for types Google does not offer on demand
#                           (a3-highgpu-1g/2g/4g, a3-megagpu-8g, a3-ultragpu-8g, a4-highgpu-8g)
#   --reservation NAME      consume this specific reservation
#   Without a choice: on demand where Google offers it, else Spot (said in one line).
#   --boot-disk-size SIZE   100GB to 64TB; default 200GB (the image is about 9 GB, caches grow); the
#                           disk type follows the series: hyperdisk-balanced for A3 Ultra and A4
#                           (they take no Persistent Disk), else pd-balanced
#   --service-account EMAIL the VM's identity (default: hfgpu-vm@PROJECT.iam.gserviceaccount.com,
#                           created when missing); it gets roles/artifactregistry.reader on the
#                           repository, roles/logging.logWriter, and object rights on the bucket
#   --checkpoint-bucket gs://BUCKET/PATH   checkpoints that outlive the VM (env CHECKPOINT_BUCKET):
#                           the bucket is created in the VM's region when missing, soft delete off
#   --image-family FAMILY   Deep Learning VM family with the NVIDIA driver
#                           (default common-cu129-ubuntu-2204-nvidia-580)
#   --image REF             the training image to run there (env CONTAINER_NAME; default
#                           HOST/PROJECT/REPO/IMAGE:TAG; paste build_and_push.sh's digest line)
#   --image-name NAME       image name, as for build_and_push.sh (env IMAGE_NAME)
#   --project/--location/--repo/--tag   as for build_and_push.sh
#   --dry-run               print every gcloud command, quoted, and change nothing
#   Old spellings, kept one release: --name (--vm-name), --image-ref (--image), --image NAME with
#   no '/' (--image-name), --grant-reader (the reader role is now always granted).
#
# Steps: preflight, repository check, service account, its roles, bucket, instance (found by name in
# any zone; created when missing, moving to the next zone on a stockout or when a zone does not
# offer the type). Ends with the ssh line and the launch_training.sh command to run on the VM.
# Google's machine facts: lib/machines.sh. Zones and offers: docs/spot-and-zones.md.
# The VM's startup script (deploy/vm-startup.sh) installs pigz and prints the Docker version; the
# boot disk comes from the project's baked image (bake_vm_image.sh) when one holds this image's
# dependency layers, so the first pull fetches only the code layers (docs/cold-start.md).
# Environment: HFGPU_IAM_WAIT_SECONDS (default 120), how long to wait for IAM to know a new
# service account before granting its roles fails.

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
# shellcheck disable=SC2034 # read by lib/common.sh's log/warn/die
PROG=create_instance.sh

readonly IMAGE_PROJECT=$DLVM_PROJECT
readonly READER_ROLE=roles/artifactregistry.reader
readonly LOG_ROLE=roles/logging.logWriter
readonly BUCKET_ROLE=roles/storage.objectUser
readonly VM_SA_ID=hfgpu-vm
readonly OLD_VM_NAME=gpu-transformers-vm
readonly MAX_FLEX_SECONDS=$((7 * 86400))

MACHINE_TYPE=a3-highgpu-1g
ACCELERATOR=
BOOT_DISK_GB=200
SERVICE_ACCOUNT=
PROVISIONING=
RESERVATION=
MAX_RUN_DURATION=
IMAGE_FAMILY=$DLVM_FAMILY
BOOT_FAMILY='' BOOT_PROJECT='' # choose_boot_image: a baked family of the project's own, when one matches
IMAGE_REF=
ZONES_FLAG=
ZONES=()
SA_MEMBER=
VM_ZONE=
BUCKET=
# parse_accelerator SPEC: sets ACC_TYPE and ACC_COUNT from TYPE[,count=N] (or type=TYPE,...).
parse_accelerator() {
  local spec=$1 part parts
  ACC_TYPE=
  ACC_COUNT=1
  [[ -z $spec || $spec == none ]] && return 0
  IFS=, read -ra parts <<<"$spec"
  for part in "${parts[@]}"; do
    case $part in
      type=*) ACC_TYPE=${part#type=} ;;
      count=*) to_int ACC_COUNT "--accelerator's count" "${part#count=}" 1 16 ;;
      *=*) die "invalid --accelerator '$spec': unknown key '${part%%=*}'; use TYPE,count=N" ;;
      *) ACC_TYPE=$part ;;
    esac
  done
  [[ $ACC_TYPE =~ ^nvidia-[a-z0-9-]+$ ]] ||
    die "invalid --accelerator '$spec': the type must look like nvidia-tesla-t4 (see: gcloud compute" \
      "accelerator-types list)"
  [[ $ACC_COUNT =~ ^(1|2|4|8|16)$ ]] ||
    die "invalid --accelerator '$spec': count must be 1, 2, 4, 8 or 16"
}

# duration_seconds VALUE: gcloud's duration (e.g. 7d, 36h, 1d12h, 90m) in seconds, or die.
duration_seconds() {
  local rest=$1 total=0 num unit
  [[ $rest =~ ^([0-9]+[dhms])+$ ]] ||
    die "invalid --max-run-duration '$1': use days, hours, minutes, seconds like 7d, 36h or 1d12h"
  while [[ $rest =~ ^([0-9]+)([dhms])(.*)$ ]]; do
    num=$((10#${BASH_REMATCH[1]})) unit=${BASH_REMATCH[2]} rest=${BASH_REMATCH[3]}
    case $unit in d) total=$((total + num * 86400)) ;; h) total=$((total + num * 3600)) ;;
      m) total=$((total + num * 60)) ;; s) total=$((total + num)) ;; esac
  done
  printf '%s\n' "$total"
}

# parse_disk_size VALUE: BOOT_DISK_GB from 200, 200GB or 1TB (decimal; 100GB to 64TB).
parse_disk_size() {
  [[ $1 =~ ^([0-9]{1,9})(GB|TB)?$ ]] ||
    die "invalid boot disk size '$1': use a size like 200GB or 1TB"
  local gb unit=${BASH_REMATCH[2]}
  to_int gb "--boot-disk-size" "${BASH_REMATCH[1]}" 0
  [[ $unit == TB ]] && gb=$((gb * 1024))
  ((gb >= 100)) ||
    die "boot disk $1 is too small: the Deep Learning VM image, the training image and the caches need at least 100GB"
  ((gb <= 65536)) || die "boot disk $1 is too large: a boot disk can be at most 64TB"
  BOOT_DISK_GB=$gb
}

# parse_bucket: BUCKET from CHECKPOINT_BUCKET (gs://BUCKET[/PATH]), or die naming its origin.
parse_bucket() {
  [[ -z $CHECKPOINT_BUCKET ]] && return 0
  local origin
  origin=$(config_origin CHECKPOINT_BUCKET)
  [[ $CHECKPOINT_BUCKET =~ ^gs://([^/]+)(/.*)?$ ]] ||
    die "invalid checkpoint bucket '$CHECKPOINT_BUCKET' ($origin): use gs://BUCKET/PATH"
  BUCKET=${BASH_REMATCH[1]}
  [[ $BUCKET =~ ^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$ && $BUCKET != goog* ]] ||
    die "invalid bucket name '$BUCKET' ($origin): use 3-63 lowercase letters, digits, '-' and '_', starting and" \
      "ending with a letter or digit, not starting with 'goog'"
}

validate_inputs() {
  validate_vm_name "$VM_NAME" "$(config_origin VM_NAME)"
  validate_zone "$ZONE" "$(config_origin ZONE)"
  local zone
  if [[ -n $ZONES_FLAG ]]; then
    IFS=, read -ra ZONES <<<"$ZONES_FLAG"
    for zone in "${ZONES[@]}"; do
      validate_zone "$zone" --zones
    done
    ZONE=${ZONES[0]}
  fi
  [[ $MACHINE_TYPE =~ ^[a-z][a-z0-9]*(-[a-z0-9]+)+$ ]] ||
    die "invalid machine type '$MACHINE_TYPE': use a type like a3-highgpu-1g or g2-standard-8"
  parse_accelerator "$ACCELERATOR"
  [[ -z $SERVICE_ACCOUNT || $SERVICE_ACCOUNT =~ ^[a-z0-9._-]+@[a-z0-9.-]+\.gserviceaccount\.com$ ]] ||
    die "invalid service account '$SERVICE_ACCOUNT': use its e-mail, NAME@PROJECT.iam.gserviceaccount.com"
  [[ $IMAGE_FAMILY =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "invalid image family '$IMAGE_FAMILY': see gcloud compute images list --project $IMAGE_PROJECT"
  [[ -z $RESERVATION || $RESERVATION =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "invalid reservation name '$RESERVATION': use the name gcloud compute reservations list shows"
  parse_bucket
  # checked here, before the service account is made; lib/gcp.sh reads it
  # shellcheck disable=SC2034 # only checked
  local iam_wait
  to_int iam_wait HFGPU_IAM_WAIT_SECONDS "${HFGPU_IAM_WAIT_SECONDS:-120}" 0 3600
  validate_location "$LOCATION" "$(config_origin LOCATION)"
  validate_repo "$REPO_NAME" "$(config_origin REPO_NAME)"
  validate_image "$IMAGE_NAME" "$(config_origin IMAGE_NAME)"
  validate_tag "$TAG" "$(config_origin TAG)"
  config_default_project
  [[ -n $PROJECT ]] || die "preflight: no project set; pass --project ID or run: gcloud config set project ID"
  validate_project "$PROJECT" "$(config_origin PROJECT)"
}

# choose_offer: check MACHINE_TYPE, its GPUs and the provisioning model against Google's machine
# facts (lib/machines.sh), before any API call. Without a choice: on demand where Google offers it,
# else Spot (said in one line).
choose_offer() {
  local no_gpu=''
  if ! machine_facts "$MACHINE_TYPE"; then
    # An accelerator-optimized family (A*, G*) whose type no row knows: its GPUs, boot disk and
    # offers are unknown here, and Google refuses a name it does not have only after the account,
    # roles and bucket are made.
    [[ ! $MACHINE_TYPE =~ ^(a[0-9]+x?|g[0-9]+)- ]] ||
      die "$MACHINE_TYPE is not a GPU machine type lib/machines.sh knows (A2, A3 High/Mega/Ultra, A4, G2, N1);" \
        "check the name (gcloud compute machine-types list --filter name=$MACHINE_TYPE), or add its row there"
    if [[ -n $ACC_TYPE ]]; then
      die "$MACHINE_TYPE takes no GPUs: --accelerator attaches GPUs to N1 types only (e.g. --machine-type" \
        "n1-standard-8); or pick a GPU machine type (g2-standard-8, a3-highgpu-1g) without --accelerator"
    fi
    no_gpu="$MACHINE_TYPE has no GPU: launch_training.sh needs one; pick a GPU machine type (g2-standard-8,"
    no_gpu+=" a3-highgpu-1g) or an N1 type with --accelerator"
  fi
  if [[ $MF_GPU == attach ]]; then
    if [[ -z $ACC_TYPE ]]; then
      no_gpu="$MACHINE_TYPE (N1) has no GPU without --accelerator: launch_training.sh needs one; add e.g."
      no_gpu+=" --accelerator nvidia-tesla-t4,count=1"
    elif gpu_facts "$ACC_TYPE" && [[ $GF_N1 != yes ]]; then
      die "$ACC_TYPE cannot be attached to $MACHINE_TYPE: N1 takes $(n1_gpus) only; for $ACC_TYPE pick its" \
        "machine type (docs/spot-and-zones.md) and leave out --accelerator"
    fi
  fi
  if [[ -n $MF_GPU && $MF_GPU != attach && -n $ACC_TYPE ]] &&
    [[ $ACC_TYPE != "$MF_GPU" || $ACC_COUNT != "$MF_COUNT" ]]; then
    die "$MACHINE_TYPE comes with $MF_COUNT x $MF_GPU attached; leave out --accelerator (or pick a" \
      "machine type for $ACC_COUNT x $ACC_TYPE)"
  fi
  [[ -n $MF_GPU && $MF_GPU != attach ]] && ACC_TYPE=
  local offered=${MF_GCE// /, } what="$MACHINE_TYPE${MF_SERIES:+ ($MF_SERIES)}"
  case $PROVISIONING in
    '')
      if machine_offers on-demand; then
        PROVISIONING=on-demand
      else
        PROVISIONING=spot-default
      fi
      ;;
    flex-start)
      machine_offers flex-start ||
        die "Compute Engine does not offer $what as Flex-start (offered: $offered); use --spot, or an" \
          "accelerator-optimized type (A2, A3, A4, G2) with --flex-start"
      ;;
    *)
      if ! machine_offers "$PROVISIONING"; then
        local flags=--${MF_GCE// / or --}
        flags=${flags/--reservation/--reservation NAME}
        die "$what is not offered as $PROVISIONING on Compute Engine (offered: $offered); pass $flags" \
          "(docs/spot-and-zones.md)"
      fi
      ;;
  esac
  if [[ -n $MAX_RUN_DURATION && $PROVISIONING != flex-start ]]; then
    die "--max-run-duration goes with --flex-start; add --flex-start, or leave out --max-run-duration"
  fi
  if [[ $PROVISIONING == flex-start ]]; then
    local seconds
    seconds=$(duration_seconds "${MAX_RUN_DURATION:-7d}")
    ((seconds >= 600 && seconds <= MAX_FLEX_SECONDS)) ||
      die "--max-run-duration must be from 10m to 7d for Flex-start; got '$MAX_RUN_DURATION'"
    MAX_RUN_DURATION=${seconds}s
  fi
  # After every refusal above: a bad combination stays one line.
  [[ -z $no_gpu ]] || warn "$no_gpu"
  if [[ $PROVISIONING == spot-default ]]; then
    PROVISIONING=spot
    log "$what is not offered on demand (offered: $offered): creating a Spot VM (pass --flex-start for a" \
      "fixed-length run, or --reservation NAME)"
  fi
}

# check_alpha: Flex-start VMs are created with gcloud's alpha track (SDK 528), a component of its own.
check_alpha() {
  [[ $DRY_RUN == 1 ]] && return 0
  gcloud alpha compute instances create --help >/dev/null 2>&1 ||
    die "preflight: --flex-start needs gcloud's alpha commands; install them: gcloud components install alpha" \
      "(apt or dnf installs: install google-cloud-cli, which has them), or use --spot"
}

# set_provisioning MODEL: one of --spot, --flex-start, --on-demand, --reservation.
set_provisioning() {
  [[ -z $PROVISIONING || $PROVISIONING == "$1" ]] ||
    die "$FLAG conflicts with --$PROVISIONING: choose one of --spot, --flex-start, --on-demand, --reservation"
  PROVISIONING=$1
}

# image_ref: the reference the VM will run.
image_ref() {
  printf '%s\n' "${IMAGE_REF:-${CONTAINER_NAME:-$(registry_image)}}"
}

# check_repository: the image's Artifact Registry repository exists (read-only; before any change).
# Sets AR_LOCATION, AR_PROJECT, AR_REPO (empty when the image is not in Artifact Registry).
check_repository() {
  local ref out
  ref=$(image_ref)
  AR_LOCATION="" AR_PROJECT="" AR_REPO=""
  if [[ $ref =~ ^([a-z0-9-]+)-docker\.pkg\.dev/([^/]+)/([^/]+)/ ]]; then
    AR_LOCATION=${BASH_REMATCH[1]} AR_PROJECT=${BASH_REMATCH[2]} AR_REPO=${BASH_REMATCH[3]}
  elif [[ -z $IMAGE_REF && -z $CONTAINER_NAME && -z $REGISTRY_HOST ]]; then
    AR_LOCATION=$LOCATION AR_PROJECT=$PROJECT AR_REPO=$REPO_NAME
  else
    log "repository: $ref is not in Artifact Registry; no reader role is granted"
    return 0
  fi
  GCP_DESCRIBE=(gcloud artifacts repositories describe "$AR_REPO" --project "$AR_PROJECT" --location "$AR_LOCATION"
    --format 'value(name)')
  GCP_CREATE=()
  gcp_describe_or_create repository "$AR_REPO in $AR_LOCATION (project $AR_PROJECT)" \
    artifactregistry.googleapis.com "roles/artifactregistry.reader on the repository" \
    "run ./build_and_push.sh first, or pass the --image your build printed"
}

# check_zone_and_image: the zone and the image family exist (read-only; before any change).
check_zone_and_image() {
  local out zone
  [[ $DRY_RUN == 1 ]] && return 0
  for zone in "${ZONES[@]:-$ZONE}"; do
    out=$(gcloud compute zones describe "$zone" --project "$PROJECT" --format 'value(name)' 2>&1) && continue
    grep -qE 'was not found|NOT_FOUND' <<<"$out" &&
      die "unknown zone '$zone' ($(config_origin ZONE)${ZONES_FLAG:+ or --zones}); pick one from: gcloud compute" \
        "zones list"
    gcp_fail "preflight: cannot read zone $zone" "$out" compute.googleapis.com "roles/compute.viewer"
  done
  out=$(gcloud compute images describe-from-family "$IMAGE_FAMILY" --project "$IMAGE_PROJECT" \
    --format 'value(name)' 2>&1) && return 0
  grep -qE 'was not found|NOT_FOUND' <<<"$out" &&
    die "unknown image family '$IMAGE_FAMILY'; pick a current one: gcloud compute images list --project" \
      "$IMAGE_PROJECT --no-standard-images"
  gcp_fail "preflight: cannot read image family $IMAGE_FAMILY" "$out" compute.googleapis.com "roles/compute.viewer"
}

# ensure_service_account: the dedicated service account (unless --service-account), created when
# missing; a concurrent create (409) counts as found.
ensure_service_account() {
  local email=${SERVICE_ACCOUNT:-$VM_SA_ID@$PROJECT.iam.gserviceaccount.com}
  SA_MEMBER=serviceAccount:$email
  SERVICE_ACCOUNT=$email
  GCP_DESCRIBE=(gcloud iam service-accounts describe "$email" --project "$PROJECT" --format 'value(email)')
  GCP_CREATE=()
  [[ $email == "$VM_SA_ID@$PROJECT.iam.gserviceaccount.com" ]] &&
    GCP_CREATE=(gcloud iam service-accounts create "$VM_SA_ID" --project "$PROJECT" --display-name "hfgpu training VM")
  gcp_describe_or_create "service account" "$email" iam.googleapis.com roles/iam.serviceAccountAdmin \
    "create it, or leave out --service-account to use $VM_SA_ID"
  [[ $GCP_STATE == exists ]] && log "service account: $email exists"
  return 0
}

# ensure_binding KIND TARGET ROLE: the VM's account (SA_MEMBER) holds ROLE on TARGET, where KIND is
# project, repository or bucket.
ensure_binding() {
  local kind=$1 target=$2 role=$3 api admin
  case $kind in
    project)
      GCP_IAM=(gcloud projects) GCP_IAM_TARGET=("$PROJECT")
      api=cloudresourcemanager.googleapis.com admin="roles/resourcemanager.projectIamAdmin on $PROJECT"
      ;;
    repository)
      GCP_IAM=(gcloud artifacts repositories)
      GCP_IAM_TARGET=("$AR_REPO" --project "$AR_PROJECT" --location "$AR_LOCATION")
      api=artifactregistry.googleapis.com admin="roles/artifactregistry.admin on $target"
      ;;
    bucket)
      GCP_IAM=(gcloud storage buckets) GCP_IAM_TARGET=("$target")
      api=storage.googleapis.com admin="roles/storage.admin on $target"
      ;;
  esac
  gcp_ensure_binding "$kind $target" "$SA_MEMBER" "$role" "$api" "$admin"
}

# ensure_bucket: the checkpoint bucket, created in the VM's region when missing, with soft delete
# off: checkpoints are rewritten and rotated, and soft-deleted bytes are billed for the retention
# time (default 7 days; cloud.google.com/storage/docs/soft-delete advises against it for such data).
# An existing bucket's soft delete is reported in one line, with the command that turns it off.
ensure_bucket() {
  [[ -z $BUCKET ]] && return 0
  local region=${ZONE%-*} where retention
  GCP_DESCRIBE=(gcloud storage buckets describe "gs://$BUCKET"
    --format 'value(location,soft_delete_policy.retentionDurationSeconds)')
  GCP_CREATE=(gcloud storage buckets create "gs://$BUCKET" --project "$PROJECT" --location "$region"
    --uniform-bucket-level-access --soft-delete-duration 0)
  # A bucket name is global: 403 on it may mean it is someone else's; 409 on create that it is taken.
  gcp_describe_or_create bucket "gs://$BUCKET" storage.googleapis.com \
    "roles/storage.admin on the project (bucket names are global: if gs://$BUCKET is someone else's, choose another)"
  [[ $GCP_STATE == created ]] && log "bucket: gs://$BUCKET created in $region, soft delete off"
  [[ $GCP_STATE == exists ]] || return 0
  IFS=$'\t' read -r where retention <<<"$(tail -n1 <<<"$GCP_OUT")"
  where=${where,,}
  log "bucket: gs://$BUCKET exists ($where)"
  [[ $where == "$region" ]] ||
    warn "bucket: gs://$BUCKET is in $where, not in the VM's region $region: uploads cross regions (slower," \
      "egress charges)"
  if [[ $retention =~ ^[0-9]+$ ]] && ((retention > 0)); then
    warn "bucket: gs://$BUCKET keeps deleted objects $((retention / 86400)) days (soft delete), billed like" \
      "live ones, and checkpoint rotation deletes many GB; to turn it off: gcloud storage buckets update" \
      "gs://$BUCKET --clear-soft-delete"
  fi
  return 0
}

# find_instance: VM_ZONE and the status of a VM named VM_NAME in any zone (empty when none).
# With the default name, a VM with the old default name (OLD_VM_NAME) counts as this one.
find_instance() {
  local out name zone status
  VM_ZONE=
  if ! out=$(gcloud compute instances list --project "$PROJECT" \
    --format 'value(name,zone.basename(),status)' 2>&1); then
    gcp_fail "instance: cannot list the VMs of $PROJECT" "$out" compute.googleapis.com "roles/compute.instanceAdmin.v1"
  fi
  if [[ $(config_origin VM_NAME) == "the default VM_NAME" ]] && ! grep -q "^$VM_NAME"$'\t' <<<"$out" &&
    grep -q "^$OLD_VM_NAME"$'\t' <<<"$out"; then
    log "instance: using $OLD_VM_NAME (the old default name); pass --vm-name to choose another"
    VM_NAME=$OLD_VM_NAME
  fi
  while IFS=$'\t' read -r name zone status; do
    if [[ $name == "$VM_NAME" ]]; then
      VM_ZONE=$zone
      log "instance: $VM_NAME exists in $zone ($status); not recreated"
      return 0
    fi
  done <<<"$out"
}

# create_command ZONE: CREATE, the gcloud command for the VM in ZONE.
create_command() {
  local zone=$1
  CREATE=(gcloud compute instances create "$VM_NAME" --project "$PROJECT" --zone "$zone"
    --machine-type "$MACHINE_TYPE")
  [[ -n $ACC_TYPE ]] && CREATE+=(--accelerator "type=$ACC_TYPE,count=$ACC_COUNT")
  CREATE+=(--image-family "${BOOT_FAMILY:-$IMAGE_FAMILY}" --image-project "${BOOT_PROJECT:-$IMAGE_PROJECT}"
    --boot-disk-size "${BOOT_DISK_GB}GB" --boot-disk-type "$MF_BOOT"
    --maintenance-policy TERMINATE
    --metadata install-nvidia-driver=True
    --metadata-from-file "startup-script=$HFGPU_ROOT/deploy/vm-startup.sh"
    --service-account "$SERVICE_ACCOUNT" --scopes cloud-platform)
  case $PROVISIONING in
    spot) CREATE+=(--provisioning-model SPOT --instance-termination-action STOP) ;;
    flex-start)
      # FLEX_START is in gcloud's alpha track only (SDK 528), which calls the compute/alpha API.
      CREATE=(gcloud alpha "${CREATE[@]:1}" --provisioning-model FLEX_START
        --max-run-duration "$MAX_RUN_DURATION" --instance-termination-action DELETE
        --reservation-affinity none)
      ;;
    reservation) CREATE+=(--reservation-affinity specific --reservation "$RESERVATION") ;;
  esac
  return 0
}

# choose_boot_image: boot from the project's baked image for the training image's dependency
# layers (bake_vm_image.sh; docs/cold-start.md) when that family exists: sets BOOT_FAMILY and
# BOOT_PROJECT. The family's name comes from the image's layers, so the image must be on this
# machine (build_and_push.sh leaves it there); otherwise, and under --dry-run, IMAGE_FAMILY.
choose_boot_image() {
  local family out
  [[ $DRY_RUN == 1 ]] && return 0
  family=$(baked_family "$(image_ref)") || return 0
  if out=$(gcloud compute images describe-from-family "$family" --project "$PROJECT" \
    --format 'value(name,diskSizeGb)' 2>&1); then
    local name size
    read -r name size <<<"$out"
    # A boot disk may not be smaller than its image (Image.diskSizeGb: bake_vm_image.sh --boot-disk-size).
    if ((${size:-0} > BOOT_DISK_GB)); then
      warn "boot disk: the baked image $name is ${size}GB, more than this VM's ${BOOT_DISK_GB}GB: booting from" \
        "$IMAGE_FAMILY, whose VM pulls the whole image; pass --boot-disk-size ${size}GB to use it"
      return 0
    fi
    BOOT_FAMILY=$family BOOT_PROJECT=$PROJECT
    log "boot disk: baked image $name (family $family): the image's dependency layers are on it"
  elif grep -qE 'was not found|NOT_FOUND' <<<"$out"; then
    log "boot disk: $IMAGE_FAMILY; no baked image for this image's dependency layers (family $family):" \
      "./bake_vm_image.sh makes one, and later VMs pull only the code layers"
  else
    warn "boot disk: cannot read the baked family $family ($(gcloud_error "$out")): booting from" \
      "$IMAGE_FAMILY, whose VM pulls the whole image; grant roles/compute.viewer to use baked images"
  fi
}

# region_zones: the region's zones after ZONE, alphabetically (the fallback order), from the API.
region_zones() {
  local region=${ZONE%-*} out
  out=$(gcloud compute zones list --project "$PROJECT" --filter "region~/$region\$" --format 'value(name)' 2>&1) ||
    gcp_fail "instance: cannot list the zones of $region" "$out" compute.googleapis.com "roles/compute.viewer"
  grep -E "^$region-[a-z]\$" <<<"$out" | sort | grep -vFx "$ZONE" || true
}

# zone_lacks_type ZONE OUT: ZONE does not offer MACHINE_TYPE, after an insert there failed with OUT.
# Google answers that case with 400 "invalid" (docs/test-environment.md has the wording); rather
# than that text, the zone's own list decides: an empty machineTypes.list for the type. Only when
# the list cannot be read does the message decide ("does not exist in zone", "was not found").
zone_lacks_type() {
  local zone=$1 out=$2 list
  if list=$(gcloud compute machine-types list --project "$PROJECT" --zones "$zone" \
    --filter "name=$MACHINE_TYPE" --format 'value(name)' 2>/dev/null); then
    grep -qFx "$MACHINE_TYPE" <<<"$list" && return 1
    return 0
  fi
  grep -qE "does not exist in zone|machineTypes/$MACHINE_TYPE'? was not found" <<<"$out"
}

# quota_of OUT: the quota a refused insert ran out of (e.g. NVIDIA_L4_GPUS), from gcloud's rendering
# of the error's quotaInfo details ("metric name = compute.googleapis.com/nvidia_l4_gpus", seen with
# gcloud 528: it prints no QUOTA_EXCEEDED code for it), else from Google's message ("Quota 'X'
# exceeded"). Returns 1 when OUT is not a quota error.
quota_of() {
  local metric
  metric=$(grep -oE 'metric name = [a-z0-9.-]+/[A-Za-z0-9_]+' <<<"$1" | head -n1 || true)
  metric=${metric##*/}
  [[ -n $metric || ! $1 =~ Quota\ \'([A-Za-z0-9_]+)\'\ exceeded ]] || metric=${BASH_REMATCH[1]}
  [[ -n $metric ]] || return 1
  printf '%s\n' "${metric^^}"
}

# quota_limit OUT: "Limit: N in region R" from the quotaInfo details gcloud printed, else from the message.
quota_limit() {
  local limit region
  limit=$(sed -nE 's/^[[:space:]]*limit = ([0-9.]+)$/\1/p' <<<"$1" | head -n1)
  region=$(sed -nE 's/^[[:space:]]*dimensions = region: ([a-z0-9-]+).*$/\1/p' <<<"$1" | head -n1)
  if [[ -n $limit ]]; then
    printf 'Limit: %s%s\n' "$limit" "${region:+ in region $region}"
  else
    grep -oE 'Limit: [^ ]+ in [a-z]+ ?[a-z0-9-]*' <<<"$1" | head -n1 || true
  fi
}

# insert_error ZONE OUT: die with the one line for a refused insert in ZONE, naming the fix.
insert_error() {
  local zone=$1 out=$2 why
  why="instance: creating $VM_NAME in $zone failed: $(gcloud_error "$out")"
  if grep -qE "images/family/$IMAGE_FAMILY'? was not found" <<<"$out"; then
    die "$why; pick a current family: gcloud compute images list --project $IMAGE_PROJECT --no-standard-images"
  elif grep -qE "zones/$zone'? was not found" <<<"$out"; then
    die "$why; pick a zone from: gcloud compute zones list --filter region:${zone%-*}"
  elif grep -qE 'acceleratorType|Accelerator type' <<<"$out"; then
    die "$why; A2/A3/A4/G2 types come with their GPUs (leave out --accelerator); N1 takes T4/V100/P100/P4: gcloud" \
      "compute accelerator-types list --filter zone:$zone"
  elif grep -qE 'provisioningModel|reservation' <<<"$out"; then
    die "$why; see docs/spot-and-zones.md for how Google offers $MACHINE_TYPE (--spot, --flex-start, --reservation)"
  fi
  gcp_fail "instance: creating $VM_NAME in $zone failed" "$out" compute.googleapis.com "roles/compute.instanceAdmin.v1"
}

# ensure_instance: create the VM unless it exists, trying the zones in order on a stockout.
ensure_instance() {
  local out zone tried=() lacking=() i=0 region_listed=0
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd gcloud compute instances list --project "$PROJECT" --format 'value(name,zone.basename(),status)'
    create_command "$ZONE"
    printf '# only when no VM %s exists (on a stockout: the same in the next zone):\n' "$VM_NAME"
    quote_cmd "${CREATE[@]}"
    VM_ZONE=$ZONE
    return 0
  fi
  log "instance: looking for $VM_NAME"
  find_instance
  [[ -n $VM_ZONE ]] && return 0
  ((${#ZONES[@]})) || ZONES=("$ZONE")
  while ((i < ${#ZONES[@]})); do
    zone=${ZONES[i]}
    i=$((i + 1))
    tried+=("$zone")
    create_command "$zone"
    log "instance: creating $VM_NAME in $zone ($MACHINE_TYPE, $PROVISIONING)"
    if out=$("${CREATE[@]}" 2>&1); then
      VM_ZONE=$zone
      log "instance: $VM_NAME created in $zone"
      return 0
    fi
    if grep -qE "$GCP_EXISTS_RE" <<<"$out"; then
      VM_ZONE=$zone
      log "instance: $VM_NAME was created in $zone meanwhile; not recreated"
      return 0
    fi
    local next=0
    if grep -qE 'ZONE_RESOURCE_POOL_EXHAUSTED|does not have enough resources' <<<"$out"; then
      log "instance: $zone has no $MACHINE_TYPE capacity now (stockout); trying the next zone"
      next=1
    elif ! quota_of "$out" >/dev/null && zone_lacks_type "$zone" "$out"; then
      log "instance: $zone does not offer $MACHINE_TYPE; trying the next zone"
      lacking+=("$zone")
      next=1
    fi
    if ((next)); then
      if [[ -z $ZONES_FLAG && $region_listed == 0 ]]; then
        region_listed=1
        mapfile -t -O "${#ZONES[@]}" ZONES < <(region_zones)
      fi
      continue
    fi
    local quota
    if quota=$(quota_of "$out"); then
      local limit
      limit=$(quota_limit "$out")
      die "instance: quota $quota exceeded in $zone (${limit:-no limit given}); ask for more at" \
        "https://console.cloud.google.com/iam-admin/quotas?project=$PROJECT (filter $quota, Edit quotas; Spot VMs" \
        "use it too unless PREEMPTIBLE_$quota is granted, which only keeps them off it), or try another --machine-type"
    fi
    insert_error "$zone" "$out"
  done
  if ((${#lacking[@]} == ${#tried[@]})); then
    die "instance: no zone tried offers $MACHINE_TYPE (${tried[*]}); find one with: gcloud compute machine-types" \
      "list --filter name=$MACHINE_TYPE, then pass --zones, or pick another --machine-type"
  fi
  die "instance: no capacity for $MACHINE_TYPE in any zone tried (${tried[*]}${lacking[*]:+; ${lacking[*]} do not offer" \
    "it}); try later, --zones in another region, or another --machine-type"
}

print_next_steps() {
  local ref host zone=${VM_ZONE:-$ZONE} launch
  ref=$(image_ref)
  host=${ref%%/*}
  launch=(./launch_training.sh --image "$ref" --restart-on-preemption)
  [[ -n $CHECKPOINT_BUCKET ]] && launch+=(--checkpoint-bucket "$CHECKPOINT_BUCKET")
  launch+=(bert)
  log "done; next, from this repository's folder:"
  cat >&2 <<EOF
  # copy the launcher to the VM, then log in
  $(quote_cmd gcloud compute ssh "$VM_NAME" --project "$PROJECT" --zone "$zone" --command 'mkdir -p ~/gpu-transformers')
  $(quote_cmd gcloud compute scp --recurse --project "$PROJECT" --zone "$zone" \
    launch_training.sh lib VERSION "$VM_NAME:~/gpu-transformers/")
  $(quote_cmd gcloud compute ssh "$VM_NAME" --project "$PROJECT" --zone "$zone")
  # on the VM (the first boot installs the NVIDIA driver: wait until nvidia-smi answers)
  $(quote_cmd cd gpu-transformers) && $(quote_cmd gcloud auth configure-docker "$host" --quiet)
  $(quote_cmd "${launch[@]}")
EOF
  # The two lines scripts want, on stdout (not under --dry-run: stdout then holds the commands).
  if [[ $DRY_RUN != 1 ]]; then
    printf '%s\n' "$(quote_cmd gcloud compute ssh "$VM_NAME" --project "$PROJECT" --zone "$zone")"
    printf '%s\n' "$(quote_cmd "${launch[@]}")"
  fi
}

parse_args() {
  while (($#)); do
    flag_begin "$1"
    case $FLAG in
      -h | --help)
        usage "${BASH_SOURCE[0]}"
        exit 0
        ;;
      --spot) flag_switch && set_provisioning spot ;;
      --flex-start) flag_switch && set_provisioning flex-start ;;
      --on-demand) flag_switch && set_provisioning on-demand ;;
      --reservation) flag_value "$@" && set_provisioning reservation && RESERVATION=$VALUE ;;
      --max-run-duration) flag_value "$@" && MAX_RUN_DURATION=$VALUE ;;
      --grant-reader) flag_switch && flag_deprecated "nothing: the reader role is now always granted" ;;
      --dry-run) flag_switch && DRY_RUN=1 ;;
      --vm-name) flag_value "$@" && config_set_flag VM_NAME --vm-name "$VALUE" ;;
      --name) flag_value "$@" && flag_deprecated --vm-name && config_set_flag VM_NAME --name "$VALUE" ;;
      --zone) flag_value "$@" && config_set_flag ZONE --zone "$VALUE" ;;
      --zones) flag_value "$@" && ZONES_FLAG=$VALUE ;;
      --machine-type) flag_value "$@" && MACHINE_TYPE=$VALUE ;;
      --accelerator) flag_value "$@" && ACCELERATOR=$VALUE ;;
      --boot-disk-size) flag_value "$@" && parse_disk_size "$VALUE" ;;
      --service-account) flag_value "$@" && SERVICE_ACCOUNT=$VALUE ;;
      --checkpoint-bucket) flag_value "$@" && config_set_flag CHECKPOINT_BUCKET --checkpoint-bucket "$VALUE" ;;
      --image-family) flag_value "$@" && IMAGE_FAMILY=$VALUE ;;
      --image-ref) flag_value "$@" && flag_deprecated --image && IMAGE_REF=$VALUE ;;
      --image)
        flag_value "$@"
        if [[ $VALUE == */* ]]; then
          IMAGE_REF=$VALUE
        else # the old meaning: an image name
          warn "--image NAME (an image name) is deprecated; use --image-name NAME (--image now takes a full reference)"
          config_set_flag IMAGE_NAME --image "$VALUE"
        fi
        ;;
      --image-name) flag_value "$@" && config_set_flag IMAGE_NAME --image-name "$VALUE" ;;
      --project) flag_value "$@" && config_set_flag PROJECT --project "$VALUE" ;;
      --location) flag_value "$@" && config_set_flag LOCATION --location "$VALUE" ;;
      --repo) flag_value "$@" && config_set_flag REPO_NAME --repo "$VALUE" ;;
      --tag) flag_value "$@" && config_set_flag TAG --tag "$VALUE" ;;
      *) flag_unknown ;;
    esac
    shift "$FLAG_SHIFT"
  done
}

main() {
  config_init
  parse_args "$@"
  config_default VM_NAME hfgpu-vm
  config_default ZONE "${LOCATION}-a"
  validate_inputs
  choose_offer
  log "preflight: checking gcloud"
  gcp_preflight
  [[ $PROVISIONING != flex-start ]] || check_alpha
  check_repository
  check_zone_and_image
  ensure_service_account
  [[ -n $AR_REPO ]] && ensure_binding repository "$AR_REPO" "$READER_ROLE"
  ensure_binding project "$PROJECT" "$LOG_ROLE"
  ensure_bucket
  [[ -n $BUCKET ]] && ensure_binding bucket "gs://$BUCKET" "$BUCKET_ROLE"
  choose_boot_image
  ensure_instance
  print_next_steps
}

main "$@"
