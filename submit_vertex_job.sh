#!/usr/bin/env bash
# Summary: run a training script on Vertex AI custom training: the project's image on one or
# more GPU machines (Spot, Flex-start or on demand), outputs in Cloud Storage.
#
# Usage: submit_vertex_job.sh [OPTIONS] [SCRIPT] [-- SCRIPT_ARGS...]
#        (the options: below, declared in lib/options/submit_vertex_job.sh)
#
# SCRIPT (default: bert)
#   bert                  the bundled /app/test_training_bert_base.py
#   gpt2                  this repository's volume/test_training_distillgpt2.py, uploaded to
#                         OUTPUT/hfgpu-scripts/ (needs --output); read through /gcs
#   NAME[.py], /app/NAME.py   a script bundled in the image's /app
#   gs://BUCKET/PATH.py   a script in Cloud Storage, read through Vertex's /gcs mount
# Everything after `--` goes to the script unchanged; an output path there (--output_dir,
# --logging_dir, --model_dir...) must be in Cloud Storage, /gcs/BUCKET/PATH: the job's machines
# and their disks go when the job ends. Without one, the programs write to the job's folders
# under --output (AIP_CHECKPOINT_DIR, AIP_MODEL_DIR, AIP_TENSORBOARD_LOG_DIR).
#
# Every input is checked before anything is uploaded or submitted.
#
# Prints the job's resource name (projects/P/locations/R/customJobs/ID) on stdout.
# Secrets: only their names go into the job; the image fetches the values from Secret Manager
# at start, with the job's service account (build_image/bin/fetch-secrets).
# Environment: HFGPU_POLL_SECONDS (default 30) between state checks of --follow,
# HFGPU_LOG_GRACE_SECONDS (15) how long --follow still streams logs after the end; the
# configuration names of lib/common.sh (LOCATION PROJECT REPO_NAME IMAGE_NAME TAG
# REGISTRY_HOST CONTAINER_NAME), each option's in its line below.

set -euo pipefail

# lib/*.sh are linted on their own (make lint runs shellcheck without -x).
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck disable=SC1091
source "$HFGPU_ROOT/lib/flags.sh"
# shellcheck disable=SC1091
source "$HFGPU_ROOT/lib/gcp.sh"
# Google's machine facts (GPUs per machine type, Vertex AI's GPU names, Flex-start's GPUs).
# shellcheck disable=SC1091
source "$HFGPU_ROOT/lib/machines.sh"
# The script's output options among its arguments (script_output_args).
# shellcheck disable=SC1091
source "$HFGPU_ROOT/lib/script_support.sh"
# shellcheck disable=SC1091
source "$HFGPU_ROOT/lib/options.sh"
# shellcheck disable=SC1091
source "$HFGPU_ROOT/lib/options/submit_vertex_job.sh"

# shellcheck disable=SC2034 # read by lib/common.sh's messages
readonly PROG=submit_vertex_job.sh
readonly DEFAULT_MACHINE=a3-highgpu-1g
readonly SCRIPTS_FOLDER=hfgpu-scripts
# Where Vertex AI's Cloud Storage FUSE mount shows the buckets in the container.
readonly GCS_MOUNT=/gcs
readonly TERMINAL_STATES=" JOB_STATE_SUCCEEDED JOB_STATE_FAILED JOB_STATE_CANCELLED JOB_STATE_EXPIRED
  JOB_STATE_PARTIALLY_SUCCEEDED "

# Settings, filled by the option table (lib/options/submit_vertex_job.sh) and the resolve_* functions.
opt_machine='' opt_accelerator='' opt_nodes=1 opt_spot=0 opt_flex=0 opt_max_wait=''
opt_output='' opt_sa='' opt_display_name='' opt_follow=0
script_arg=bert
script_args=() env_pairs=() secret_pairs=()
image='' machine='' acc_type='' acc_count=0 max_wait='' script_path='' upload_src='' upload_dst=''
display_name='' spec='' job_name='' tmp_dir='' logs_pid=''

# ------------------------------------------------------------ validation

# validate: what the option table cannot say (lib/options.sh has checked each value, from flags,
# environment and .env alike, and the conflicts), before any gcloud call.
validate() {
  ((${#OPT_ARGS[@]} <= 1)) ||
    die "unexpected argument $(q "${OPT_ARGS[1]}"): give one SCRIPT; its own arguments go after --"
  script_arg=${OPT_ARGS[0]:-bert}
  script_args=("${OPT_REST[@]}")
  [[ -z $opt_output ]] || opt_output=${opt_output%/}
  [[ -z $opt_max_wait ]] || max_wait=$(duration_seconds "$opt_max_wait")
  check_image
  resolve_machine
  check_offer
  resolve_script
  check_script_outputs
  local n
  to_int n HFGPU_POLL_SECONDS "${HFGPU_POLL_SECONDS:-30}" 0 3600
  to_int n HFGPU_LOG_GRACE_SECONDS "${HFGPU_LOG_GRACE_SECONDS:-15}" 0 600
}

# duration_seconds TEXT: 30m, 4h, 1d, 90s or 90 (the table's `wait` type) -> Vertex's "Ns" duration.
duration_seconds() {
  [[ $1 =~ ^([0-9]{1,9})([smhd]?)$ ]]
  local n=$((10#${BASH_REMATCH[1]}))
  case ${BASH_REMATCH[2]} in
    m) n=$((n * 60)) ;;
    h) n=$((n * 3600)) ;;
    d) n=$((n * 86400)) ;;
  esac
  printf '%ss\n' "$n"
}

# check_script_outputs: an output path among the script's arguments (after --) must be in Cloud
# Storage (/gcs/BUCKET/...): anything else is on the job's machine, lost when the job ends. The
# options lib/script_support.sh's script_output_args finds (--output_dir, --logging-dir, trainkit's
# --model_dir...), the last of a repeated one: the script reads only that one, as argparse does.
check_script_outputs() {
  local i name value norm
  script_output_args "${script_args[@]}"
  for i in "${!SCRIPT_OUTPUT_NAMES[@]}"; do
    name=${SCRIPT_OUTPUT_NAMES[i]} value=${SCRIPT_OUTPUT_VALUES[i]}
    norm=$value
    [[ $norm == /* ]] && norm=$(realpath -m -- "$norm")
    [[ $norm =~ ^$GCS_MOUNT/[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/|$) ]] && continue
    die "--$name $(q "$value") (after --) is on the job's machine, lost when the job ends; use a path in" \
      "Cloud Storage, $GCS_MOUNT/BUCKET/PATH, or leave it out (with --output the programs write to the job's" \
      "folders: AIP_CHECKPOINT_DIR, AIP_MODEL_DIR, AIP_TENSORBOARD_LOG_DIR)"
  done
}

# resolve_secrets: secret_pairs (checked by the table's secret-pair type) ->
# NAME=projects/P/secrets/S/versions/V, comma-joined.
hfgpu_secrets=''
resolve_secrets() {
  local pair name ref secret version
  local -a out=()
  for pair in "${secret_pairs[@]}"; do
    name=${pair%%=*} ref=${pair#*=}
    if [[ $ref == projects/* ]]; then
      out+=("$name=$ref")
    else
      [[ $ref =~ ^([A-Za-z0-9_-]{1,255})(:([0-9]+|latest))?$ ]]
      secret=${BASH_REMATCH[1]} version=${BASH_REMATCH[3]:-latest}
      out+=("$name=projects/$PROJECT/secrets/$secret/versions/$version")
    fi
  done
  local IFS=,
  hfgpu_secrets=${out[*]}
}

# ------------------------------------------------------------- resolving

resolve_project() {
  config_default_project
  [[ -n $PROJECT ]] ||
    die "no Google Cloud project: pass --project ID, set PROJECT, or run gcloud config set project ID"
  validate_project "$PROJECT" "$(config_origin PROJECT)"
}

# has_registry REF: the reference names a registry host (Vertex must pull it from somewhere).
has_registry() {
  local first=${1%%/*}
  [[ $1 == */* && ($first == *.* || $first == *:* || $first == localhost) ]]
}

# check_image: the image given (--image, CONTAINER_NAME) names a registry; else the parts of the
# Artifact Registry image build_and_push.sh pushed are names it could have pushed.
check_image() {
  if [[ -n $CONTAINER_NAME ]]; then
    has_registry "$CONTAINER_NAME" ||
      die "image $(q "$CONTAINER_NAME") ($(config_origin CONTAINER_NAME)) names no registry, and Vertex AI" \
        "pulls the image: give --image HOST/PROJECT/REPO/IMAGE:TAG (push it first: ./build_and_push.sh)"
    return 0
  fi
  validate_repo "$REPO_NAME" "$(config_origin REPO_NAME)"
  validate_image "$IMAGE_NAME" "$(config_origin IMAGE_NAME)"
  validate_tag "$TAG" "$(config_origin TAG)"
  [[ -z $REGISTRY_HOST ]] || validate_registry_host "$REGISTRY_HOST" "$(config_origin REGISTRY_HOST)"
}

# resolve_image: --image, else CONTAINER_NAME, else the Artifact Registry image (needs PROJECT).
resolve_image() {
  image=${CONTAINER_NAME:-$(registry_image)}
}

# resolve_machine: machine, acc_type and acc_count from the flags or the machine type; GPUs that do
# not fit the type are refused in the line create_instance.sh gives for them (lib/machines.sh).
resolve_machine() {
  local given why
  machine=${opt_machine:-$DEFAULT_MACHINE}
  if [[ -n $opt_accelerator ]]; then
    [[ $opt_accelerator =~ ^(type=)?([A-Za-z0-9_-]+),count=([0-9]+)$ ]] # the table's type checked it
    given=${BASH_REMATCH[2]} acc_count=$((10#${BASH_REMATCH[3]}))
    if why=$(machine_gpu_mismatch "$machine" "$given" "$acc_count"); then
      die "$why"
    fi
    gpu_facts "$given"
    acc_type=$GF_VERTEX
  else
    machine_gpus "$machine"
  fi
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
        die "script $(q "$arg") must be a .py file in a bucket: gs://BUCKET/PATH/NAME.py; upload it there and pass that path"
      script_path=$(gcs_path "$arg")
      ;;
    /app/*.py) script_path=$arg ;;
    */* | *.[!p]* | *.p | *.p[!y]*)
      die "script $(q "$arg") is not in the image nor in Cloud Storage:" \
        "upload it (gcloud storage cp FILE gs://BUCKET/PATH/) and pass its gs:// path;" \
        "bundled: $(bundled_scripts)"
      ;;
    *)
      [[ $arg == *.py ]] || arg=$arg.py
      [[ -f $HFGPU_ROOT/app/$arg ]] ||
        die "script $(q "$script_arg") is not bundled in the image (bundled: $(bundled_scripts));" \
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
  local state='' seen='' message='' out failures=0
  poll=$((10#$poll)) grace=$((10#$grace)) # checked by validate
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
    if [[ $state != "$seen" ]]; then
      log "$state"
      seen=$state
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
  opt_help_first "$@"
  config_init
  opt_parse "$@"
  opt_check_config
  validate
  resolve_project
  resolve_secrets
  resolve_image
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
