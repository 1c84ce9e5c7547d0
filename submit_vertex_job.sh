#!/usr/bin/env bash
# Summary: run a training script on Vertex AI custom training: the project's image on one or
# more GPU machines (Spot, Flex-start or on demand), outputs in Cloud Storage.
#
# Usage: submit_vertex_job.sh [options] [SCRIPT] [-- SCRIPT_ARGS...]
#
# SCRIPT (default: bert)
#   bert                  the bundled /app/test_training_bert_base.py
#   gpt2                  this repository's volume/test_training_distillgpt2.py, uploaded to
#                         OUTPUT/hfgpu-scripts/ (needs --output); read through /gcs
#   NAME[.py], /app/NAME.py   a script bundled in the image's /app
#   gs://BUCKET/PATH.py   a script in Cloud Storage, read through Vertex's /gcs mount
# Everything after `--` goes to the script unchanged.
#
# Options
#   --image REF           image to run (default: CONTAINER_NAME, else the Artifact Registry
#                         image LOCATION-docker.pkg.dev/PROJECT/REPO_NAME/IMAGE_NAME:TAG)
#   --project ID          Google Cloud project (default: PROJECT, else gcloud's core/project)
#   --region REGION       Vertex AI region (default: LOCATION, else us-east4)
#   --machine-type TYPE   machine of every node (default a3-highgpu-1g)
#   --accelerator TYPE,count=N
#                         GPUs of every node, by Vertex's name (NVIDIA_H100_80GB) or Compute
#                         Engine's (nvidia-h100-80gb); default: the machine type's own GPUs
#                         (a3-*, a2-*, a4-*, g2-*: lib/machines.sh), none for other machine types
#   --nodes N             machines (default 1): pool 0 holds the chief, pool 1 the other N-1
#   --spot                Spot capacity: cheaper, can be preempted
#   --flex-start          Flex-start (Dynamic Workload Scheduler): waits for capacity; L4, A100,
#                         H100, H200 and B200 GPUs only
#   --max-wait DURATION   with --flex-start: longest wait for capacity (30m, 4h, 1d, 3600s;
#                         0 = no limit; Vertex's default 24h)
#   --output gs://BUCKET/PATH
#                         the job's base output directory: checkpoints, model, TensorBoard logs
#   --service-account EMAIL   the identity the job runs as (see docs/vertex.md for its roles)
#   --display-name NAME   the job's name in the console (default hfgpu-<user>-<script stem>)
#   --env NAME=VALUE      a plain variable for the program (repeatable); stored in the job's
#                         specification, so never a secret
#   --secret NAME=SECRET  a Secret Manager secret as variable NAME (repeatable); SECRET is
#                         projects/P/secrets/S/versions/V, or S[:VERSION] in PROJECT (latest)
#   --follow              stream the job's logs (to stderr) and its state changes until it
#                         ends; exit 0 when it succeeded, 1 otherwise
#   --dry-run             print the job specification and the gcloud command; submit nothing
#   -h, --help            this help
#
# Prints the job's resource name (projects/P/locations/R/customJobs/ID) on stdout.
# Secrets: only their names go into the job; the image fetches the values from Secret Manager
# at start, with the job's service account (build_image/bin/fetch-secrets).
# Environment: HFGPU_POLL_SECONDS (default 30) between state checks of --follow,
# HFGPU_LOG_GRACE_SECONDS (15) how long --follow still streams logs after the end; the
# configuration names of lib/common.sh (LOCATION PROJECT REPO_NAME IMAGE_NAME TAG
# REGISTRY_HOST CONTAINER_NAME).

set -euo pipefail

# lib/*.sh are linted on their own (make lint runs shellcheck without -x).
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck disable=SC1091
source "$HFGPU_ROOT/lib/flags.sh"
# Google's machine facts (GPUs per machine type, Vertex AI's GPU names, Flex-start's GPUs).
# shellcheck disable=SC1091
source "$HFGPU_ROOT/lib/machines.sh"

# shellcheck disable=SC2034 # read by lib/common.sh's messages
readonly PROG=submit_vertex_job.sh
readonly DEFAULT_MACHINE=a3-highgpu-1g
readonly SCRIPTS_FOLDER=hfgpu-scripts
# Variables that carry secrets: refused by --env (use --secret). The launcher's list, plus
# anything named like a credential.
readonly SECRET_NAMES=(HF_TOKEN HUGGING_FACE_HUB_TOKEN WANDB_API_KEY COMET_API_KEY
  NEPTUNE_API_TOKEN MLFLOW_TRACKING_TOKEN MLFLOW_TRACKING_PASSWORD)
readonly TERMINAL_STATES=" JOB_STATE_SUCCEEDED JOB_STATE_FAILED JOB_STATE_CANCELLED JOB_STATE_EXPIRED
  JOB_STATE_PARTIALLY_SUCCEEDED "

# Settings, filled by parse_args and the resolve_* functions.
opt_image='' opt_machine='' opt_accelerator='' opt_nodes=1 opt_spot=0 opt_flex=0 opt_max_wait=''
opt_output='' opt_sa='' opt_display_name='' opt_follow=0 opt_project='' opt_region=''
script_arg=bert
script_args=() env_pairs=() secret_pairs=()
image='' machine='' acc_type='' acc_count=0 max_wait='' script_path='' upload_src='' upload_dst=''
display_name='' spec='' job_name='' tmp_dir='' logs_pid=''

# ---------------------------------------------------------------- arguments

parse_args() {
  local positional=0
  while (($#)); do
    flag_begin "$1"
    case $FLAG in
      -h | --help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
      --image) flag_value "$@"; opt_image=$VALUE ;;
      --project) flag_value "$@"; opt_project=$VALUE ;;
      --region) flag_value "$@"; opt_region=$VALUE ;;
      --machine-type) flag_value "$@"; opt_machine=$VALUE ;;
      --accelerator) flag_value "$@"; opt_accelerator=$VALUE ;;
      --nodes) flag_value "$@"; to_int opt_nodes --nodes "$VALUE" 1 1000 ;;
      --spot) flag_switch; opt_spot=1 ;;
      --flex-start) flag_switch; opt_flex=1 ;;
      --max-wait) flag_value "$@"; opt_max_wait=$VALUE ;;
      --output) flag_value "$@"; opt_output=$VALUE ;;
      --service-account) flag_value "$@"; opt_sa=$VALUE ;;
      --display-name) flag_value "$@"; opt_display_name=$VALUE ;;
      --env) flag_value "$@"; env_pairs+=("$VALUE") ;;
      --secret) flag_value "$@"; secret_pairs+=("$VALUE") ;;
      --follow) flag_switch; opt_follow=1 ;;
      --dry-run) flag_switch; DRY_RUN=1 ;;
      --) shift; script_args=("$@"); break ;;
      -*) flag_unknown ;;
      *)
        ((positional == 0)) || die "unexpected argument '$1': give one SCRIPT; its own arguments go after --"
        script_arg=$1
        positional=1
        ;;
    esac
    shift "$FLAG_SHIFT"
  done
}

# ------------------------------------------------------------ validation

validate() {
  ((opt_spot + opt_flex <= 1)) || die "--spot and --flex-start exclude each other; pick one"
  if [[ -n $opt_max_wait ]]; then
    ((opt_flex)) || die "--max-wait applies to --flex-start only; add --flex-start or drop --max-wait"
    max_wait=$(duration_seconds "$opt_max_wait") ||
      die "--max-wait must be a duration like 30m, 4h, 1d or 3600s; got '$opt_max_wait'"
  fi
  [[ $LOCATION =~ ^[a-z]+-[a-z]+[0-9]+$ ]] ||
    die "region '$LOCATION' ($(config_origin LOCATION)) is not a Google Cloud region like us-east4; pass --region"
  if [[ -n $opt_output ]]; then
    [[ $opt_output =~ ^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$ ]] ||
      die "--output must be gs://BUCKET[/PATH] (a Cloud Storage folder); got '$opt_output'"
    opt_output=${opt_output%/}
  fi
  if [[ -n $opt_sa && ! $opt_sa =~ ^[^@[:space:]]+@[^@[:space:]]+\.gserviceaccount\.com$ ]]; then
    die "--service-account must be a service account email (NAME@PROJECT.iam.gserviceaccount.com); got '$opt_sa'"
  fi
  if [[ -n $opt_display_name ]] && ((${#opt_display_name} > 128)); then
    die "--display-name is longer than Vertex AI's 128 characters; shorten it"
  fi
  validate_env
}

# duration_seconds TEXT: 30m, 4h, 1d, 90s or 90 -> the seconds, as Vertex's "Ns" duration.
duration_seconds() {
  [[ $1 =~ ^([0-9]{1,9})([smhd]?)$ ]] || return 1
  local n=$((10#${BASH_REMATCH[1]}))
  case ${BASH_REMATCH[2]} in
    m) n=$((n * 60)) ;;
    h) n=$((n * 3600)) ;;
    d) n=$((n * 86400)) ;;
  esac
  printf '%ss\n' "$n"
}

# is_secret_name NAME: NAME is one of the launcher's secret variables, or has a credential word
# (TOKEN, PASSWORD, PASSWD, SECRET, API_KEY, ACCESS_KEY) between underscores, e.g. HF_TOKEN;
# TOKENIZERS_PARALLELISM is not one.
is_secret_name() {
  local upper=${1^^}
  [[ " ${SECRET_NAMES[*]} " == *" $1 "* ]] ||
    [[ $upper =~ (^|_)(TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|ACCESS_KEY)(_|$) ]]
}

validate_env() {
  local pair name
  for pair in "${env_pairs[@]}"; do
    name=${pair%%=*}
    [[ $pair == *=* && $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] ||
      die "--env takes NAME=VALUE with NAME a variable name; got '$pair'"
    if is_secret_name "$name"; then
      die "--env $name=... would store a secret in the job's specification, readable by every Vertex viewer;" \
        "use --secret $name=SECRET (Secret Manager)"
    fi
    [[ $name != HFGPU_SECRETS && $name != CLUSTER_SPEC && $name != AIP_* ]] ||
      die "--env $name is set by Vertex AI or by this script; leave it out"
  done
}

# resolve_secrets: secret_pairs -> NAME=projects/P/secrets/S/versions/V, comma-joined.
hfgpu_secrets=''
resolve_secrets() {
  local pair name ref secret version
  local -a out=()
  for pair in "${secret_pairs[@]}"; do
    name=${pair%%=*} ref=${pair#*=}
    [[ $pair == *=* && $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ && -n $ref ]] ||
      die "--secret takes NAME=SECRET (SECRET: projects/P/secrets/S/versions/V, or S[:VERSION]); got '$pair'"
    if [[ $ref =~ ^projects/[a-z0-9-]+/secrets/[A-Za-z0-9_-]{1,255}/versions/([0-9]+|latest)$ ]]; then
      out+=("$name=$ref")
    elif [[ $ref =~ ^([A-Za-z0-9_-]{1,255})(:([0-9]+|latest))?$ ]]; then
      secret=${BASH_REMATCH[1]} version=${BASH_REMATCH[3]:-latest}
      out+=("$name=projects/$PROJECT/secrets/$secret/versions/$version")
    else
      die "--secret $name: '$ref' is not projects/P/secrets/S/versions/V (V a number or latest) nor S[:VERSION]"
    fi
  done
  local IFS=,
  hfgpu_secrets=${out[*]}
}

# ------------------------------------------------------------- resolving

resolve_project() {
  config_default_project
  [[ $PROJECT =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] && return 0
  [[ -n $PROJECT ]] ||
    die "no Google Cloud project: pass --project ID, set PROJECT, or run gcloud config set project ID"
  die "project '$PROJECT' ($(config_origin PROJECT)) is not a project ID (6-30 lowercase letters, digits, '-');" \
    "pass --project ID"
}

# has_registry REF: the reference names a registry host (Vertex must pull it from somewhere).
has_registry() {
  local first=${1%%/*}
  [[ $1 == */* && ($first == *.* || $first == *:* || $first == localhost) ]]
}

resolve_image() {
  if [[ -n $opt_image ]]; then
    image=$opt_image
  elif [[ -n $CONTAINER_NAME ]]; then
    image=$CONTAINER_NAME
  else
    image=$(registry_image)
  fi
  local origin=--image
  [[ -n $opt_image ]] || origin=$(config_origin CONTAINER_NAME)
  has_registry "$image" ||
    die "image '$image' ($origin) names no registry: Vertex AI pulls the image;" \
      "push it (./build_and_push.sh) and pass --image HOST/PROJECT/REPO/IMAGE:TAG"
}

# resolve_machine: machine, acc_type and acc_count from the flags or the machine type.
resolve_machine() {
  machine=${opt_machine:-$DEFAULT_MACHINE}
  [[ $machine =~ ^[a-z][a-z0-9-]*[a-z0-9]$ ]] ||
    die "--machine-type '$machine' is not a machine type like a3-highgpu-1g or g2-standard-8"
  if [[ -n $opt_accelerator ]]; then
    parse_accelerator "$opt_accelerator"
    check_machine_gpus "$machine"
  else
    machine_gpus "$machine"
  fi
}

# parse_accelerator TEXT: [type=]TYPE,count=N in Vertex's or Compute Engine's spelling
# (lib/machines.sh's GPU_FACTS knows both).
parse_accelerator() {
  local text=$1 type count
  [[ $text =~ ^(type=)?([A-Za-z0-9_-]+),count=([0-9]+)$ ]] ||
    die "--accelerator must be TYPE,count=N (e.g. NVIDIA_H100_80GB,count=8 or nvidia-l4,count=1); got '$text'"
  type=${BASH_REMATCH[2]} count=${BASH_REMATCH[3]}
  to_int acc_count "--accelerator count" "$count" 1 16
  gpu_facts "$type" ||
    die "--accelerator type '$type' is not a Vertex AI GPU;" \
      "use one of $(gpu_names 2) (or its Compute Engine name, e.g. nvidia-h100-80gb)"
  acc_type=$GF_VERTEX
}

# check_machine_gpus TYPE: --accelerator (acc_type, acc_count) fits TYPE, as lib/machines.sh says:
# A2/A3/A4/G2 types come with their own GPUs, N1 takes T4/V100/P100/P4, other types none. Vertex AI
# would refuse the job only after the script upload; refused here first in one line.
check_machine_gpus() {
  local want_type want_count=$acc_count
  if ! machine_facts "$1"; then
    [[ $1 =~ ^(a[0-9]+x?|g[0-9]+)- ]] && return 0 # a GPU type the table does not know: Vertex decides
    die "$1 takes no GPUs: --accelerator goes with N1 types only (e.g. --machine-type n1-standard-8);" \
      "or pick a GPU machine type (g2-standard-8, a3-highgpu-1g) without --accelerator"
  fi
  if [[ $MF_GPU == attach ]]; then
    gpu_facts "$acc_type"
    [[ $GF_N1 == yes ]] ||
      die "$acc_type cannot be attached to $1: N1 takes T4, V100, P100 and P4 only; for $acc_type pick" \
        "its machine type (docs/vertex.md) and leave out --accelerator"
    return 0
  fi
  gpu_facts "$MF_GPU" || return 0
  want_type=$GF_VERTEX
  [[ $acc_type == "$want_type" && $want_count == "$MF_COUNT" ]] ||
    die "$1 comes with $MF_COUNT x $want_type; leave out --accelerator (or pick a machine type for" \
      "$acc_count x $acc_type)"
}

# machine_gpus TYPE: the GPUs a GPU machine type comes with (A2, A3, A4, G2: lib/machines.sh);
# none otherwise.
machine_gpus() {
  acc_type='' acc_count=0
  machine_facts "$1" || return 0
  [[ -n $MF_GPU && $MF_GPU != attach ]] || return 0
  gpu_facts "$MF_GPU" || return 0
  acc_type=$GF_VERTEX acc_count=$MF_COUNT
}

# check_offer: what Vertex AI refuses, refused here first in one line. Flex-start takes L4,
# A100, H100, H200 and B200 GPUs only (Vertex AI "Schedule training jobs with DWS"; GPU_FACTS).
check_offer() {
  ((opt_flex)) || return 0
  if [[ -z $acc_type ]]; then
    die "--flex-start on Vertex AI needs GPUs ($VERTEX_FLEX_GPUS); $machine has none: use a G2, A2, A3 or" \
      "A4 machine type, or drop --flex-start"
  fi
  gpu_facts "$acc_type"
  [[ $GF_VERTEX_FLEX == yes ]] ||
    die "--flex-start on Vertex AI is offered only for $VERTEX_FLEX_GPUS GPUs, not $acc_type; use --spot, or a" \
      "G2, A2, A3 or A4 machine type"
}

# resolve_script: script_arg -> script_path inside the container (and a file to upload for gpt2).
resolve_script() {
  local arg=$script_arg
  case $arg in
    bert) script_path=/app/test_training_bert_base.py ;;
    gpt2)
      [[ -n $opt_output ]] ||
        die "gpt2 is not in the image: pass --output gs://BUCKET/PATH (it is uploaded there)," \
          "or upload volume/test_training_distillgpt2.py yourself and pass its gs:// path"
      upload_src=$HFGPU_ROOT/volume/test_training_distillgpt2.py
      [[ -f $upload_src ]] || die "$upload_src is missing from this checkout; restore it (git checkout volume/)"
      upload_dst=$opt_output/$SCRIPTS_FOLDER/test_training_distillgpt2.py
      script_path=$(gcs_path "$upload_dst")
      ;;
    gs://*)
      [[ $arg =~ ^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]/.+\.py$ ]] ||
        die "script '$arg' must be a .py file in a bucket: gs://BUCKET/PATH/NAME.py"
      script_path=$(gcs_path "$arg")
      ;;
    /app/*.py) script_path=$arg ;;
    */* | *.[!p]* | *.p | *.p[!y]*)
      die "script '$arg' is not in the image nor in Cloud Storage:" \
        "upload it (gcloud storage cp FILE gs://BUCKET/PATH/) and pass its gs:// path;" \
        "bundled: $(bundled_scripts)"
      ;;
    *)
      [[ $arg == *.py ]] || arg=$arg.py
      [[ -f $HFGPU_ROOT/app/$arg ]] ||
        die "script '$script_arg' is not bundled in the image (bundled: $(bundled_scripts));" \
          "a script of your own: upload it and pass its gs:// path"
      script_path=/app/$arg
      ;;
  esac
}

bundled_scripts() {
  local -a names=()
  local f
  for f in "$HFGPU_ROOT"/app/*.py; do
    [[ ${f##*/} == trainkit.py || ${f##*/} == _* ]] || names+=("${f##*/}")
  done
  printf '%s' "${names[*]:-none}; shortcuts: bert, gpt2"
}

# gcs_path gs://B/P: where Vertex AI's Cloud Storage FUSE mount shows it, /gcs/B/P.
gcs_path() { printf '/gcs/%s\n' "${1#gs://}"; }

resolve_display_name() {
  if [[ -n $opt_display_name ]]; then
    display_name=$opt_display_name
    return 0
  fi
  local stem=${script_path##*/} user
  stem=${stem%.py}
  user=$(id -un 2>/dev/null || echo user)
  display_name=hfgpu-${user}-${stem}
  display_name=${display_name//[^a-zA-Z0-9_.-]/-}
}

# ------------------------------------------------------------ the job

# json_str TEXT: TEXT as a JSON string.
json_str() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  [[ $s != *[[:cntrl:]]* ]] || die "a value holds a control character; remove it: ${s//[[:cntrl:]]/?}"
  printf '"%s"' "$s"
}

# json_list ITEMS...: a JSON list of strings.
json_list() {
  local joined='' item
  for item in "$@"; do
    joined+="${joined:+, }$(json_str "$item")"
  done
  printf '[%s]' "$joined"
}

# build_spec: the CustomJobSpec (the `--config` of gcloud ai custom-jobs create), in JSON.
build_spec() {
  local env_json='' pair machine_json container pools
  for pair in "${env_pairs[@]}"; do
    env_json+="${env_json:+, }{\"name\": $(json_str "${pair%%=*}"), \"value\": $(json_str "${pair#*=}")}"
  done
  if [[ -n $hfgpu_secrets ]]; then
    env_json+="${env_json:+, }{\"name\": \"HFGPU_SECRETS\", \"value\": $(json_str "$hfgpu_secrets")}"
  fi
  machine_json="{\"machineType\": $(json_str "$machine")"
  if [[ -n $acc_type ]]; then
    machine_json+=", \"acceleratorType\": \"$acc_type\", \"acceleratorCount\": $acc_count"
  fi
  machine_json+="}"
  container="{\"imageUri\": $(json_str "$image"), \"args\": $(json_list train "$script_path" "${script_args[@]}")"
  [[ -z $env_json ]] || container+=", \"env\": [$env_json]"
  container+="}"
  # Pool 0: the chief, one replica; pool 1: the other nodes, the same machines.
  pools="{\"machineSpec\": $machine_json, \"replicaCount\": 1, \"containerSpec\": $container}"
  if ((opt_nodes > 1)); then
    pools+=", {\"machineSpec\": $machine_json, \"replicaCount\": $((opt_nodes - 1)), \"containerSpec\": $container}"
  fi
  spec="{\"workerPoolSpecs\": [$pools]"
  if ((opt_spot)); then
    spec+=", \"scheduling\": {\"strategy\": \"SPOT\"}"
  elif ((opt_flex)); then
    spec+=", \"scheduling\": {\"strategy\": \"FLEX_START\"${max_wait:+, \"maxWaitDuration\": \"$max_wait\"}}"
  fi
  [[ -z $opt_sa ]] || spec+=", \"serviceAccount\": $(json_str "$opt_sa")"
  [[ -z $opt_output ]] || spec+=", \"baseOutputDirectory\": {\"outputUriPrefix\": $(json_str "$opt_output")}"
  spec+="}"
}

# pretty JSON: indented when python3 is at hand (gcloud needs it anyway), else as is.
pretty() {
  python3 -m json.tool <<<"$1" 2>/dev/null || printf '%s\n' "$1"
}

create_cmd() {
  local config=$1
  create=(gcloud ai custom-jobs create --project "$PROJECT" --region "$LOCATION"
    --display-name "$display_name" --config "$config" --format 'value(name)')
}

# gcloud_error FILE: gcloud's ERROR line from its captured stderr, without the prefix.
gcloud_failure() {
  local line
  line=$(grep -m1 '^ERROR:' "$1" 2>/dev/null || true)
  line=${line#ERROR: }
  printf '%s' "${line:-$(tail -n1 "$1" 2>/dev/null)}"
}

submit() {
  local -a create
  if [[ $DRY_RUN == 1 ]]; then
    pretty "$spec"
    printf '# the specification above, saved as vertex-job.json, is submitted with:\n'
    [[ -z $upload_dst ]] || quote_cmd gcloud storage cp "$upload_src" "$upload_dst"
    create_cmd vertex-job.json
    quote_cmd "${create[@]}"
    return 0
  fi
  need_cmd gcloud "install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install"
  local dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/hfgpu-vertex.XXXXXX")
  tmp_dir=$dir
  trap cleanup EXIT
  pretty "$spec" >"$dir/vertex-job.json"
  if [[ -n $upload_dst ]]; then
    log "uploading $upload_src to $upload_dst"
    gcloud storage cp --project "$PROJECT" "$upload_src" "$upload_dst" >&2 2>"$dir/err" ||
      die "uploading the script to $upload_dst failed: $(gcloud_failure "$dir/err");" \
        "check the bucket and your access to it"
  fi
  create_cmd "$dir/vertex-job.json"
  if ! job_name=$("${create[@]}" 2>"$dir/err"); then
    die "gcloud ai custom-jobs create failed: $(gcloud_failure "$dir/err")"
  fi
  grep -v '^[[:space:]]*$' "$dir/err" >&2 || true
  [[ $job_name == projects/*/customJobs/* ]] || die "gcloud answered no job name (got '$job_name');" \
    "see the messages above"
  printf '%s\n' "$job_name"
}

# shellcheck disable=SC2329 # run by trap
cleanup() {
  [[ -z $logs_pid ]] || kill "$logs_pid" 2>/dev/null || true
  [[ -z $tmp_dir ]] || rm -rf -- "$tmp_dir"
  return 0
}

# follow: stream the job's logs (gcloud ai custom-jobs stream-logs, in the background, to
# stderr) and poll its state until it ends; 0 when it succeeded, 1 otherwise. stream-logs
# alone never ends for a job that was running when it started, so it is stopped here,
# HFGPU_LOG_GRACE_SECONDS (15) after the end: Cloud Logging lists entries a few seconds late.
follow() {
  local poll=${HFGPU_POLL_SECONDS:-30} grace=${HFGPU_LOG_GRACE_SECONDS:-15}
  local state='' last='' message='' out failures=0
  to_int poll HFGPU_POLL_SECONDS "$poll" 0 3600
  to_int grace HFGPU_LOG_GRACE_SECONDS "$grace" 0 600
  log "following $job_name: its logs, then its state changes"
  gcloud ai custom-jobs stream-logs "$job_name" --project "$PROJECT" --region "$LOCATION" \
    --polling-interval "$((poll > 0 ? poll : 1))" >&2 &
  logs_pid=$!
  while :; do
    if ! out=$(gcloud ai custom-jobs describe "$job_name" --project "$PROJECT" --region "$LOCATION" \
      --format 'value(state,error.message)' 2>/dev/null); then
      ((++failures < 5)) || die "cannot read the state of $job_name (5 tries);" \
        "check it with gcloud ai custom-jobs describe $job_name --region $LOCATION"
      sleep "$poll"
      continue
    fi
    failures=0
    IFS=$'\t' read -r state message <<<"$out"
    if [[ $state != "$last" ]]; then
      log "$state"
      last=$state
    fi
    [[ $TERMINAL_STATES == *" $state "* ]] && break
    sleep "$poll"
  done
  if kill -0 "$logs_pid" 2>/dev/null; then
    sleep "$grace"
    kill "$logs_pid" 2>/dev/null || true
  fi
  wait "$logs_pid" 2>/dev/null || true
  logs_pid=''
  [[ $state == JOB_STATE_SUCCEEDED ]] && return 0
  log "the job ended in $state${message:+: $message}"
  return 1
}

main() {
  parse_args "$@"
  config_init
  [[ -z $opt_project ]] || config_set_flag PROJECT --project "$opt_project"
  [[ -z $opt_region ]] || config_set_flag LOCATION --region "$opt_region"
  validate
  resolve_project
  resolve_secrets
  resolve_image
  resolve_machine
  check_offer
  resolve_script
  resolve_display_name
  if [[ -z $opt_output ]]; then
    warn "no --output: checkpoints and the model stay on the job's machines and are lost when it ends"
  fi
  if ((opt_spot + opt_flex == 0)) && machine_facts "$machine" && ! machine_offers on-demand; then
    warn "$machine is not offered on demand on Compute Engine (lib/machines.sh);" \
      "add --spot or --flex-start if the job stays queued"
  fi
  build_spec
  submit
  [[ $DRY_RUN == 1 || $opt_follow == 0 ]] && return 0
  follow
}

main "$@"
