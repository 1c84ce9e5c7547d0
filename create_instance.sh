#!/usr/bin/env bash
# Summary: create a Compute Engine GPU VM ready for launch_training.sh (idempotent).
# Usage: create_instance.sh [OPTIONS]   (options below; declared in lib/options/create_instance.sh)
#
# Steps: every input checked (nothing is created before: values, conflicts, zones in LOCATION's
# region, the machine type against its GPUs and offers), preflight (read-only: the zones exist,
# one offers the machine type, the image family, the repository), service account, its roles,
# bucket, instance (found by name in any zone; created when missing, moving to the next zone on a
# stockout or when a zone does not offer the type). Ends with the ssh line and the
# launch_training.sh command to run on the VM. Configuration: flags, then the environment, then
# ./.env (or CONFIG_FILE), then the defaults (each option's env name is in its line below).
# Google's machine facts: lib/machines.sh. Zones and offers: docs/spot-and-zones.md.
# The VM's startup script (deploy/vm-startup.sh) installs pigz and prints the Docker version; the
# boot disk comes from the project's baked image (bake_vm_image.sh) when one holds this image's
# dependency layers, so the first pull fetches only the code layers (docs/cold-start.md).
# Environment: HFGPU_IAM_WAIT_SECONDS (default 120), how long to wait for IAM to know a new
# service account before granting its roles fails. --grant-reader, an old option, does nothing
# now (the reader role is always granted).

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
# shellcheck source=lib/options/create_instance.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/options/create_instance.sh"
# shellcheck disable=SC2034 # read by lib/common.sh's log/warn/die
PROG=create_instance.sh

readonly IMAGE_PROJECT=$DLVM_PROJECT
readonly READER_ROLE=roles/artifactregistry.reader
readonly LOG_ROLE=roles/logging.logWriter
readonly BUCKET_ROLE=roles/storage.objectUser
readonly VM_SA_ID=hfgpu-vm
readonly OLD_VM_NAME=gpu-transformers-vm

MACHINE_TYPE=a3-highgpu-1g
ACCELERATOR=
BOOT_DISK_SIZE=200GB
BOOT_DISK_GB=
SERVICE_ACCOUNT=
PROVISIONING=
RESERVATION=
MAX_RUN_DURATION=
IMAGE_FAMILY=$DLVM_FAMILY
BOOT_FAMILY='' BOOT_PROJECT='' # choose_boot_image: a baked family of the project's own, when one matches
ZONES_FLAG=
ZONES=()
SA_MEMBER=
VM_ZONE=
BUCKET=
ACC_TYPE='' ACC_COUNT=1
NOTES=() # lines said once the read-only checks passed (a refused run stays one line)

# old_spellings ARGS...: ARGS into ARGS with what the option table cannot say: --image NAME (a
# plain image name: no '/', ':' or '@') is the old --image-name, and --grant-reader is dropped
# (the reader role is always granted); each with one deprecation line.
old_spellings() {
  local name='[a-z0-9]+([._-][a-z0-9]+)*'
  ARGS=()
  while (($#)); do
    case $1 in
      --) break ;;
      --grant-reader)
        warn "--grant-reader is deprecated and does nothing: the reader role is now always granted; leave it out"
        shift
        continue
        ;;
      --image | --image=*)
        local value=${1#--image=} n=1
        [[ $1 == *=* ]] || value=${2:-} n=2
        if [[ $value =~ ^$name$ && ${#value} -le 255 ]]; then
          warn "--image NAME (an image name) is deprecated; use --image-name NAME (--image now takes a full reference)"
          ARGS+=("--image-name=$value")
          shift "$n"
          continue
        fi
        ;;
    esac
    ARGS+=("$1")
    shift
  done
  ARGS+=("$@")
}

# zone_in_location ZONE ORIGIN: ZONE lies in LOCATION's region (or its multi-region), or one line.
zone_in_location() {
  local region=${1%-*} where="LOCATION's region $LOCATION"
  [[ $LOCATION == *-* ]] || region=${region%%-*}
  [[ $LOCATION == *-* ]] || where="LOCATION's multi-region $LOCATION"
  [[ $region == "$LOCATION" ]] && return 0
  die "zone $(q "$1") ($2) is not in $where ($(config_origin LOCATION)); pick a zone of $LOCATION, or pass" \
    "--location ${1%-*} too"
}

# validate: what the option table cannot say, before anything runs (lib/options.sh has checked
# each value, from flags, environment and .env alike, and the conflicts).
validate() {
  local zone
  [[ -z ${OPT_GIVEN[--reservation]:-} ]] || PROVISIONING=reservation
  if [[ -n $ZONES_FLAG ]]; then
    IFS=, read -ra ZONES <<<"$ZONES_FLAG"
    for zone in "${ZONES[@]}"; do
      zone_in_location "$zone" --zones
    done
    config_set_flag ZONE --zones "${ZONES[0]}"
  elif [[ -n $ZONE ]]; then
    zone_in_location "$ZONE" "$(config_origin ZONE)"
  elif [[ $LOCATION != *-* ]]; then
    die "LOCATION $(q "$LOCATION") ($(config_origin LOCATION)) is a multi-region: a VM needs a zone; pass" \
      "--zone ZONE of a region in it, or --location REGION"
  else
    config_default ZONE "$LOCATION-a" # gcp_zones (lib/gcp.sh) picks the region's first zone
  fi
  [[ -z $ACCELERATOR ]] || ci_accelerator "$ACCELERATOR"
  BOOT_DISK_GB=$(disk_gb "$BOOT_DISK_SIZE")
  [[ ! $CHECKPOINT_BUCKET =~ ^gs://([^/]+) ]] || BUCKET=${BASH_REMATCH[1]}
  [[ -z $REGISTRY_HOST ]] || validate_registry_host "$REGISTRY_HOST" "$(config_origin REGISTRY_HOST)"
  # checked here, before the service account is made; lib/gcp.sh reads it
  # shellcheck disable=SC2034 # only checked
  local iam_wait
  to_int iam_wait HFGPU_IAM_WAIT_SECONDS "${HFGPU_IAM_WAIT_SECONDS:-120}" 0 3600
  config_default_project
  [[ -n $PROJECT ]] || die "preflight: no project set; pass --project ID or run: gcloud config set project ID"
  validate_project "$PROJECT" "$(config_origin PROJECT)"
}

# choose_offer: check MACHINE_TYPE, its GPUs and the provisioning model against Google's machine
# facts (lib/machines.sh), before any API call. Without a choice: on demand where Google offers it,
# else Spot (said, in NOTES, once the read-only checks passed).
choose_offer() {
  local why
  if [[ -n $ACC_TYPE ]] && why=$(machine_gpu_mismatch "$MACHINE_TYPE" "$ACC_TYPE" "$ACC_COUNT"); then
    die "$why"
  fi
  # The option type refused an A*/G* type no row knows: no row here means a type without GPUs.
  if ! machine_facts "$MACHINE_TYPE"; then
    why="$MACHINE_TYPE has no GPU: launch_training.sh needs one; pick a GPU machine type (g2-standard-8,"
    NOTES+=("warning: $why a3-highgpu-1g) or an N1 type with --accelerator")
  elif [[ $MF_GPU == attach && -z $ACC_TYPE ]]; then
    # N1 is the series whose GPUs come only from --accelerator: without it, it was forgotten.
    die "$MACHINE_TYPE (N1) has no GPU without --accelerator, and launch_training.sh needs one; add e.g." \
      "--accelerator nvidia-tesla-t4,count=1, or pick a GPU machine type (g2-standard-8)"
  fi
  [[ -n $MF_GPU && $MF_GPU != attach ]] && ACC_TYPE=
  local offered=${MF_GCE// /, } what="$MACHINE_TYPE${MF_SERIES:+ ($MF_SERIES)}"
  case $PROVISIONING in
    '')
      if machine_offers on-demand; then
        PROVISIONING=on-demand
      else
        PROVISIONING=spot
        why="$what is not offered on demand (offered: $offered): creating a Spot VM (pass --flex-start"
        NOTES+=("$why for a fixed-length run, or --reservation NAME)")
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
  [[ $PROVISIONING != flex-start ]] || MAX_RUN_DURATION=$(duration_seconds "${MAX_RUN_DURATION:-7d}")s
}

# say_notes: the lines choose_offer kept (a warning, or the Spot default), after the read-only checks.
say_notes() {
  local note
  for note in "${NOTES[@]}"; do
    if [[ $note == "warning: "* ]]; then warn "${note#warning: }"; else log "$note"; fi
  done
}

# check_alpha: Flex-start VMs are created with gcloud's alpha track (SDK 528), a component of its own.
check_alpha() {
  [[ $DRY_RUN == 1 ]] && return 0
  gcloud alpha compute instances create --help >/dev/null 2>&1 ||
    die "preflight: --flex-start needs gcloud's alpha commands; install them: gcloud components install alpha" \
      "(apt or dnf installs: install google-cloud-cli, which has them), or use --spot"
}

# image_ref: the reference the VM will run.
image_ref() {
  printf '%s\n' "${CONTAINER_NAME:-$(registry_image)}"
}

# check_repository: the image's Artifact Registry repository exists (read-only; before any change).
# Sets AR_LOCATION, AR_PROJECT, AR_REPO (empty when the image is not in Artifact Registry).
check_repository() {
  local ref out
  ref=$(image_ref)
  AR_LOCATION="" AR_PROJECT="" AR_REPO=""
  if [[ $ref =~ ^([a-z0-9-]+)-docker\.pkg\.dev/([^/]+)/([^/]+)/ ]]; then
    AR_LOCATION=${BASH_REMATCH[1]} AR_PROJECT=${BASH_REMATCH[2]} AR_REPO=${BASH_REMATCH[3]}
  elif [[ -z $CONTAINER_NAME && -z $REGISTRY_HOST ]]; then
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

# check_offers: a zone to try offers MACHINE_TYPE (machineTypes.list, read-only), before anything
# is created; the zones before it that do not are dropped from ZONES (said in NOTES).
check_offers() {
  local zone list
  local -a lacking=()
  while ((${#ZONES[@]})); do
    zone=${ZONES[0]}
    list=$(gcloud compute machine-types list --project "$PROJECT" --zones "$zone" --filter "name=$MACHINE_TYPE" \
      --format 'value(name)' 2>&1) ||
      gcp_fail "preflight: cannot list the machine types of $zone" "$list" compute.googleapis.com "roles/compute.viewer"
    if grep -qFx "$MACHINE_TYPE" <<<"$list"; then
      ((${#lacking[@]} == 0)) || NOTES+=("${lacking[*]} do not offer $MACHINE_TYPE; trying $zone first")
      return 0
    fi
    lacking+=("$zone")
    ZONES=("${ZONES[@]:1}")
  done
  die "instance: no zone tried offers $MACHINE_TYPE (${lacking[*]}); find one with: gcloud compute machine-types" \
    "list --filter name=$MACHINE_TYPE, then pass --zones, or pick another --machine-type"
}

# check_image_family: the Deep Learning VM family exists (read-only; before any change).
check_image_family() {
  local out
  out=$(gcloud compute images describe-from-family "$IMAGE_FAMILY" --project "$IMAGE_PROJECT" \
    --format 'value(name)' 2>&1) && return 0
  grep -qE 'was not found|NOT_FOUND' <<<"$out" &&
    die "unknown image family $(q "$IMAGE_FAMILY") (--image-family); pick a current one: gcloud compute images" \
      "list --project $IMAGE_PROJECT --no-standard-images"
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
  local out zone tried=() lacking=() i=0
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
    ((next == 0)) || continue
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

main() {
  opt_help_first "$@"
  config_init
  old_spellings "$@"
  opt_parse "${ARGS[@]}"
  ((${#OPT_ARGS[@]} + ${#OPT_REST[@]} == 0)) ||
    die "unexpected argument $(q "${OPT_ARGS[0]:-${OPT_REST[0]:-}}"): create_instance.sh takes options only; see --help"
  opt_check_config
  config_default VM_NAME hfgpu-vm
  validate
  choose_offer
  gcp_preflight
  [[ $PROVISIONING != flex-start ]] || check_alpha
  if [[ $DRY_RUN != 1 ]]; then
    gcp_zones
    check_offers
    check_image_family
  fi
  say_notes
  check_repository
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
