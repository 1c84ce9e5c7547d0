#!/usr/bin/env bash
# Summary: create a Compute Engine GPU VM ready for launch_training.sh (idempotent).
# Usage: create_instance.sh [--name NAME] [--zone ZONE] [--machine-type TYPE]
#                           [--accelerator TYPE,count=N | --accelerator none]
#                           [--boot-disk-size SIZE] [--service-account EMAIL] [--grant-reader]
#                           [--spot] [--image-family FAMILY] [--image-ref REF]
#                           [--project ID] [--location REGION] [--repo NAME] [--image NAME]
#                           [--tag TAG] [--dry-run] [-h|--help]
#
#   --name NAME             VM name (env INSTANCE_NAME; default gpu-transformers-vm)
#   --zone ZONE             zone with the GPU (env ZONE; default LOCATION-a, e.g. us-east4-a)
#   --machine-type TYPE     default a3-highgpu-1g (1 x H100 80GB); cheaper: g2-standard-8
#   --accelerator T,count=N default nvidia-h100-80gb,count=1; with g2-standard-8: nvidia-l4,count=1
#   --boot-disk-size SIZE   default 200GB (the image is about 9 GB, the volume's caches grow)
#   --service-account EMAIL the VM's identity (default: the project's Compute Engine default
#                           service account); it needs roles/artifactregistry.reader
#   --grant-reader          grant that role on the repository (else only check and warn)
#   --spot                  Spot VM: provisioning-model SPOT, stopped (not deleted) when
#                           reclaimed; launch_training.sh --restart-on-preemption resumes
#   --image-family FAMILY   Deep Learning VM family with the NVIDIA driver
#                           (default common-cu129-ubuntu-2204-nvidia-580, project
#                           deeplearning-platform-release)
#   --image-ref REF         the training image to run there (env CONTAINER_NAME; default
#                           HOST/PROJECT/REPO/IMAGE:TAG; paste build_and_push.sh's digest line)
#   --project/--location/--repo/--image/--tag   as for build_and_push.sh
#   --dry-run               print every gcloud command, quoted, and change nothing
#
# Steps: preflight, instance (describe; create only when missing), reader (the service
# account's role on the repository). Ends with the ssh line and the launch_training.sh
# command to run on the VM.

set -euo pipefail

# shellcheck source=lib/common.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/gcp.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/gcp.sh"
# shellcheck disable=SC2034 # read by lib/common.sh's log/warn/die
PROG=create_instance.sh

readonly IMAGE_PROJECT=deeplearning-platform-release
readonly READER_ROLE=roles/artifactregistry.reader

NAME=${INSTANCE_NAME:-gpu-transformers-vm}
ZONE=${ZONE:-}
MACHINE_TYPE=a3-highgpu-1g
ACCELERATOR=nvidia-h100-80gb,count=1
BOOT_DISK_SIZE=200GB
SERVICE_ACCOUNT=
GRANT_READER=0
SPOT=0
IMAGE_FAMILY=common-cu129-ubuntu-2204-nvidia-580

# parse_accelerator SPEC: sets ACC_TYPE and ACC_COUNT from TYPE[,count=N] (or type=TYPE,...).
parse_accelerator() {
  local spec=$1 part
  ACC_TYPE=
  ACC_COUNT=1
  if [[ $spec == none ]]; then
    return 0
  fi
  IFS=, read -ra parts <<<"$spec"
  for part in "${parts[@]}"; do
    case $part in
      type=*) ACC_TYPE=${part#type=} ;;
      count=*) ACC_COUNT=${part#count=} ;;
      *=*) die "invalid --accelerator '$spec': unknown key '${part%%=*}'; use TYPE,count=N" ;;
      *) ACC_TYPE=$part ;;
    esac
  done
  [[ $ACC_TYPE =~ ^nvidia-[a-z0-9-]+$ ]] ||
    die "invalid --accelerator '$spec': the type must look like nvidia-h100-80gb or nvidia-l4 (see: gcloud compute accelerator-types list)"
  [[ $ACC_COUNT =~ ^(1|2|4|8|16)$ ]] ||
    die "invalid --accelerator '$spec': count must be 1, 2, 4, 8 or 16"
}

validate_inputs() {
  validate_instance_name "$NAME"
  validate_zone "$ZONE"
  [[ $MACHINE_TYPE =~ ^[a-z][a-z0-9]*(-[a-z0-9]+)+$ ]] ||
    die "invalid machine type '$MACHINE_TYPE': use a type like a3-highgpu-1g or g2-standard-8"
  parse_accelerator "$ACCELERATOR"
  [[ $BOOT_DISK_SIZE =~ ^[0-9]+$ ]] && BOOT_DISK_SIZE=${BOOT_DISK_SIZE}GB
  [[ $BOOT_DISK_SIZE =~ ^([0-9]+)(GB|TB)$ ]] ||
    die "invalid boot disk size '$BOOT_DISK_SIZE': use a size like 200GB or 1TB"
  if [[ ${BASH_REMATCH[2]} == GB ]] && ((BASH_REMATCH[1] < 100)); then
    die "boot disk $BOOT_DISK_SIZE is too small: the Deep Learning VM image, the training image and the caches need at least 100GB"
  fi
  [[ -z $SERVICE_ACCOUNT || $SERVICE_ACCOUNT =~ ^[a-z0-9._-]+@[a-z0-9.-]+\.gserviceaccount\.com$ ]] ||
    die "invalid service account '$SERVICE_ACCOUNT': use its e-mail, NAME@PROJECT.iam.gserviceaccount.com"
  [[ $IMAGE_FAMILY =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "invalid image family '$IMAGE_FAMILY': see gcloud compute images list --project $IMAGE_PROJECT"
  validate_location "$LOCATION"
  validate_repo "$REPO_NAME"
  validate_image "$IMAGE_NAME"
  validate_tag "$TAG"
  config_default_project
  [[ -n $PROJECT ]] || die "preflight: no project set; pass --project ID or run: gcloud config set project ID"
  validate_project "$PROJECT"
}

preflight() {
  log "preflight: checking gcloud"
  need_cmd gcloud "preflight: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) or run this in Cloud Shell"
  gcloud auth print-access-token --quiet >/dev/null 2>&1 ||
    die "preflight: gcloud is not authenticated; run: gcloud auth login (Cloud Shell: authorize when asked)"
}

create_command() {
  CREATE=(gcloud compute instances create "$NAME" --project "$PROJECT" --zone "$ZONE"
    --machine-type "$MACHINE_TYPE")
  [[ -n $ACC_TYPE ]] && CREATE+=(--accelerator "type=$ACC_TYPE,count=$ACC_COUNT")
  CREATE+=(--image-family "$IMAGE_FAMILY" --image-project "$IMAGE_PROJECT"
    --boot-disk-size "$BOOT_DISK_SIZE" --boot-disk-type pd-balanced
    --maintenance-policy TERMINATE
    --metadata install-nvidia-driver=True
    --scopes cloud-platform)
  [[ -n $SERVICE_ACCOUNT ]] && CREATE+=(--service-account "$SERVICE_ACCOUNT")
  if [[ $SPOT == 1 ]]; then
    CREATE+=(--provisioning-model SPOT --instance-termination-action STOP)
  fi
  return 0
}

ensure_instance() {
  local describe out
  describe=(gcloud compute instances describe "$NAME" --project "$PROJECT" --zone "$ZONE"
    --format 'value(status)')
  create_command
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "${describe[@]}"
    printf '# only when the describe above answers "was not found":\n'
    quote_cmd "${CREATE[@]}"
    return 0
  fi
  log "instance: checking $NAME in $ZONE"
  if out=$("${describe[@]}" 2>&1); then
    log "instance: $NAME exists ($(tail -n1 <<<"$out")); not recreated"
    return 0
  fi
  grep -qiE 'was not found|NOT_FOUND' <<<"$out" ||
    die "instance: cannot read $NAME in $ZONE: $(gcloud_error "$out"); enable the API (gcloud services enable compute.googleapis.com) and check your role (roles/compute.instanceAdmin.v1)"
  log "instance: creating $NAME ($MACHINE_TYPE${ACC_TYPE:+, $ACC_COUNT x $ACC_TYPE}$([[ $SPOT == 1 ]] && echo ', Spot'))"
  if ! out=$("${CREATE[@]}" 2>&1); then
    die "instance: creating $NAME failed: $(gcloud_error "$out"); for GPU quota or stock errors try another --zone, --spot, or --machine-type g2-standard-8 --accelerator nvidia-l4,count=1"
  fi
  printf '%s\n' "$out" >&2
}

# reader_member: the VM's service account as an IAM member.
reader_member() {
  local sa=$SERVICE_ACCOUNT
  if [[ -z $sa ]]; then
    sa=$(gcloud compute project-info describe --project "$PROJECT" --format 'value(defaultServiceAccount)' 2>/dev/null || true)
    sa=${sa%% *}
  fi
  [[ -n $sa ]] || die "reader: cannot find the project's default service account; pass --service-account EMAIL"
  printf 'serviceAccount:%s\n' "$sa"
}

ensure_reader() {
  local member policy grant
  if [[ $DRY_RUN == 1 ]]; then
    if [[ $GRANT_READER == 1 ]]; then
      quote_cmd gcloud artifacts repositories add-iam-policy-binding "$REPO_NAME" --project "$PROJECT" \
        --location "$LOCATION" --member "serviceAccount:${SERVICE_ACCOUNT:-<default compute service account>}" \
        --role "$READER_ROLE" --quiet
    fi
    return 0
  fi
  member=$(reader_member)
  if [[ $GRANT_READER == 1 ]]; then
    log "reader: granting $READER_ROLE on $REPO_NAME to $member"
    grant=(gcloud artifacts repositories add-iam-policy-binding "$REPO_NAME" --project "$PROJECT"
      --location "$LOCATION" --member "$member" --role "$READER_ROLE" --quiet)
    local out
    out=$("${grant[@]}" 2>&1) ||
      die "reader: granting $READER_ROLE failed: $(gcloud_error "$out"); you need roles/artifactregistry.admin on the repository"
    return 0
  fi
  policy=$(gcloud artifacts repositories get-iam-policy "$REPO_NAME" --project "$PROJECT" --location "$LOCATION" \
    --format json 2>/dev/null || true)
  if grep -q "\"$member\"" <<<"$policy" && grep -qE '"roles/artifactregistry\.(reader|writer|repoAdmin|admin)"' <<<"$policy"; then
    log "reader: $member can read $REPO_NAME"
  else
    warn "reader: $member has no Artifact Registry role on $REPO_NAME (project-wide roles not checked); if the pull is denied, rerun with --grant-reader"
  fi
}

print_next_steps() {
  local ref=${CONTAINER_NAME:-$(registry_image)} host
  host=$(registry_host)
  ref=${IMAGE_REF:-$ref}
  log "done; next, from this repository's folder:"
  cat >&2 <<EOF
  # copy the launcher to the VM, then log in
  $(quote_cmd gcloud compute ssh "$NAME" --project "$PROJECT" --zone "$ZONE" --command 'mkdir -p ~/gpu-transformers')
  $(quote_cmd gcloud compute scp --recurse --project "$PROJECT" --zone "$ZONE" launch_training.sh lib VERSION "$NAME:~/gpu-transformers/")
  $(quote_cmd gcloud compute ssh "$NAME" --project "$PROJECT" --zone "$ZONE")
  # on the VM (the first boot installs the NVIDIA driver: wait until nvidia-smi answers)
  $(quote_cmd cd gpu-transformers) && $(quote_cmd gcloud auth configure-docker "$host" --quiet)
  $(quote_cmd ./launch_training.sh --image "$ref" --restart-on-preemption bert)
EOF
  # The two lines scripts want, on stdout.
  printf '%s\n' "$(quote_cmd gcloud compute ssh "$NAME" --project "$PROJECT" --zone "$ZONE")"
  printf '%s\n' "$(quote_cmd ./launch_training.sh --image "$ref" --restart-on-preemption bert)"
}

parse_args() {
  local flag value
  while (($#)); do
    flag=$1
    value=
    case $flag in
      -h | --help)
        usage "${BASH_SOURCE[0]}"
        exit 0
        ;;
      --spot) SPOT=1 ;;
      --grant-reader) GRANT_READER=1 ;;
      --dry-run) DRY_RUN=1 ;;
      --name | --zone | --machine-type | --accelerator | --boot-disk-size | --service-account | \
        --image-family | --image-ref | --project | --location | --repo | --image | --tag)
        (($# >= 2)) || die "$flag needs a value; see --help"
        value=$2
        shift
        ;;
      --*=*)
        value=${flag#*=}
        flag=${flag%%=*}
        ;;
      *) die "unknown argument '$flag'; see --help" ;;
    esac
    case $flag in
      --spot | --grant-reader | --dry-run) ;;
      --name) NAME=$value ;;
      --zone) ZONE=$value ;;
      --machine-type) MACHINE_TYPE=$value ;;
      --accelerator) ACCELERATOR=$value ;;
      --boot-disk-size) BOOT_DISK_SIZE=$value ;;
      --service-account) SERVICE_ACCOUNT=$value ;;
      --image-family) IMAGE_FAMILY=$value ;;
      --image-ref) IMAGE_REF=$value ;;
      --project) PROJECT=$value ;;
      --location) LOCATION=$value ;;
      --repo) REPO_NAME=$value ;;
      --image) IMAGE_NAME=$value ;;
      --tag) TAG=$value ;;
      *) die "unknown argument '$flag'; see --help" ;;
    esac
    shift
  done
}

main() {
  config_init
  IMAGE_REF=
  parse_args "$@"
  ZONE=${ZONE:-${LOCATION}-a}
  validate_inputs
  preflight
  ensure_instance
  ensure_reader
  print_next_steps
}

main "$@"
