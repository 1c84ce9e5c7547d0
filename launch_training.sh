#!/usr/bin/env bash
# Summary: run a training script in the project's image on this machine's GPUs
# (or on CPU), with the volume mounted, as you, safely on Spot VMs.
#
# Usage: launch_training.sh [options] [SCRIPT] [-- SCRIPT_ARGS...]
#
# SCRIPT (default: bert)
#   bert            the bundled /app/test_training_bert_base.py
#   gpt2            test_training_distillgpt2.py from the volume (copied there
#                   from this repository's volume/ when missing)
#   NAME.py         a script bundled in the image's /app
#   PATH.py         a .py file inside the volume folder (a path on this machine,
#                   relative to the volume, or /volume/...): no rebuild needed
# Everything after `--` goes to the script unchanged. The options are below (declared in
# lib/options/launch_training.sh); each reads `--opt VALUE` or `--opt=VALUE`, on/off flags take no
# value, numbers are decimal, and an empty value is an error (leave the option out for the default).
# A --docker-arg that would override what the launcher sets (the container's name, user, owner
# label, the /volume, secrets and CA mounts, its variables, GPUs, network, restart policy) is
# refused with the option to use instead.
#
# Secrets: HF_TOKEN, HUGGING_FACE_HUB_TOKEN, WANDB_API_KEY, COMET_API_KEY,
# NEPTUNE_API_TOKEN, MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_PASSWORD (when set)
# reach the program through a file in a private folder ($XDG_RUNTIME_DIR, else
# ~/.cache/hfgpu, mode 700), mounted read-only; never through the command line,
# docker inspect, the logs or the volume. On a shared VM, anyone in the docker
# group is root-equivalent: they can read your secrets and your volume.
# Stopping (Ctrl-C, SIGTERM, a Spot preemption): `docker stop` gives the program
# --stop-timeout S (default 120) to save its checkpoint.
# Exit status: the program's (75 = preempted after a complete checkpoint; run the
# same command again to resume), or 1 with one line on stderr when a check fails.
# Environment: HFGPU_MIN_FREE_GB (default 20) free-disk warning threshold;
# HFGPU_DEBUG=1 traces every command (never a secret's value); BASE_IMAGE and
# CA_BUNDLE for a local build; see lib/common.sh for the configuration names.

set -euo pipefail

# lib/*.sh are linted on their own (make lint runs shellcheck without -x).
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/flags.sh"
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/script_support.sh"
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/gcp.sh"
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/options.sh"
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/options/launch_training.sh"

readonly PROG=launch_training.sh
readonly PREEMPTED_EXIT=75
# runc's error when the engine cannot raise the locked-memory limit (RLIMIT_MEMLOCK is resource 8
# on Linux, <asm-generic/resource.h>); seen here for type 7 (nofile) as "error setting rlimit type 7".
readonly MEMLOCK_REFUSED='error setting rlimit type 8'
# Each launch labels its containers with its own id: a failed start is removed by it, never by name.
readonly LAUNCH_LABEL=hfgpu.launch
# The image's reader of Trainer arguments (app/hf_script_args.py) and where a restart's
# private copy of a JSON/YAML config goes (in the volume, 0600).
readonly HF_ARGS_HELPER=/app/hf_script_args.py
readonly CONFIG_COPY_DIR=.hfgpu/resume
# The image's minimum driver: the new label, the old one, then the image's ENV.
readonly DRIVER_LABELS=(hfgpu.min-nvidia-driver ai.gpu-transformers.min-nvidia-driver)
# OWNER_LABEL, SECRETS_MOUNT, CA_MOUNT, DEFAULT_SECRET_NAMES: lib/options/launch_training.sh.

# ------------------------------------------------------------------ globals
# Set by parse_args (the opt_* values, by lib/options/launch_training.sh) and the resolve_* functions.
opt_build=0 opt_gpus='' opt_nproc='' opt_nnodes=1 opt_node_rank=0
opt_master_addr='' opt_master_port='' opt_rdzv='' opt_network='' opt_name='' opt_detach=0
opt_restart=0 opt_max_restarts=10 opt_env_file='' opt_share=0 opt_stop_timeout=120
opt_outside_volume=0
script_arg=bert
script_args=() docker_extra=() extra_secret_names=() env_specs=()
volume=''          # resolve_volume: the host folder (absolute, symlinks resolved)
image=''           # resolve_image: the reference to run
image_origin=''    # resolve_image: where it came from (config_origin)
image_action=''    # plan_image: have, pull or build
script_path=''     # resolve_script: the script's path inside the container
script_src=''      # resolve_script: the script's source on this machine ('' when unknown)
app_script=''      # resolve_script: a name to find in the image's /app ('' for volume scripts)
gpus=''            # resolve_gpus: all, none, N or device=...
owner=''           # resolve_name: the owner label's value (your user name)
name=''            # resolve_name: the container's name
log_file=''        # resolve_name: VOLUME/logs/NAME-DATE.log
umask_value=077    # resolve_sharing: 077, or 022 with --share
env_pairs=()       # resolve_env: NAME=VALUE of each --env
secret_names=()    # resolve_secrets: the secret variables that are set
secrets_dir=''     # write_secrets: the private folder of this run
owns_secrets=0     # write_secrets: this process removes secrets_dir
src_copy=''        # fetch_app_source: a temporary copy of a bundled script's source
container_id=''    # start_container: the running container
stopping=0 memlock=1 docker_runtimes='' run_cmd=()
engine_version=''  # check_docker: the Docker engine's version (zstd images need 23.0 or newer)
resume_args=()     # supervise: what a restart adds to script_args (script_resume_plan)
config_copy=''     # supervise: a restart's private copy of the script's JSON/YAML config (replaces script_args)
bucket_hook=0      # resolve_bucket_hook: the image's hook mirrors a plain Trainer script's checkpoints
run_start=0        # start_container: when the latest container started (epoch seconds)
launch_id=$(date +%s)-$$-$RANDOM # this launch's LAUNCH_LABEL value

# ---------------------------------------------------------------- helpers

# version_lt A B: A is an older version than B (dotted numbers).
version_lt() {
  [[ $1 != "$2" && $(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1) == "$1" ]]
}

# quietly FUNCTION ARGS...: run it with xtrace off (HFGPU_DEBUG=1 never shows a secret).
quietly() {
  local traced=0 rc=0
  [[ $- == *x* ]] && traced=1
  { set +x; } 2>/dev/null
  "$@" || rc=$?
  ((traced == 0)) || set -x
  return "$rc"
}

# has_registry REF: the reference names a registry host (so pulling can work).
has_registry() {
  local first=${1%%/*}
  [[ $1 == */* && ($first == *.* || $first == *:* || $first == localhost) ]]
}

# is_image_ref REF: a plausible docker image reference ([HOST[:PORT]/]PATH[:TAG][@sha256:HEX]).
is_image_ref() {
  local host='([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]+)?/)?'
  local part='[a-z0-9]+([._-]+[a-z0-9]+)*'
  [[ $1 =~ ^$host$part(/$part)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$ ]]
}

# is_loopback_host HOST[:PORT]: a registry on this machine (no route or NAT is involved).
is_loopback_host() {
  local h=${1%:*}
  [[ $1 != *:* ]] && h=$1
  [[ $h == localhost || $h == 127.* || $h == '[::1]' ]]
}

# bucket_problem URL: why URL is not gs://BUCKET[/PATH] (Cloud Storage's bucket naming rules); '' if it is.
bucket_problem() {
  local url=$1 bucket
  [[ $url == gs://* ]] || { echo "does not start with gs://"; return 0; }
  bucket=${url#gs://}
  bucket=${bucket%%/*}
  if [[ ! $bucket =~ ^[a-z0-9][a-z0-9._-]*[a-z0-9]$ ]]; then
    echo "bucket '$bucket' must be lowercase letters, digits, '-', '_', '.', starting and ending with a letter or digit"
  elif ((${#bucket} < 3 || ${#bucket} > 222)) || { [[ $bucket != *.* ]] && ((${#bucket} > 63)); }; then
    echo "bucket '$bucket' must be 3-63 characters (up to 222 with dots)"
  elif [[ $bucket =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || $bucket == goog* || $bucket == *google* ]]; then
    echo "bucket '$bucket' may not be an IP address, start with 'goog' or contain 'google'"
  elif [[ $url =~ [[:space:]] ]]; then
    echo "contains white space"
  fi
}

# ------------------------------------------------------------- arguments

parse_args() {
  opt_parse "$@"
  opt_check_config
  if ((${#OPT_ARGS[@]} > 1)); then
    die "unexpected argument $(q "${OPT_ARGS[1]}"): give one SCRIPT; its own arguments go after --"
  fi
  if ((${#OPT_ARGS[@]})); then
    script_arg=${OPT_ARGS[0]}
    [[ $script_arg == *[![:space:]]* && $script_arg != *[[:cntrl:]]* ]] ||
      die "the SCRIPT argument $(q "$script_arg") is empty or not one line; give a script name (see --help)"
  fi
  script_args=("${OPT_REST[@]}")
  # Numbers as the table read them (decimal: 08 is 8).
  local v
  for v in opt_nnodes opt_node_rank opt_master_port opt_max_restarts opt_stop_timeout opt_nproc opt_gpus; do
    [[ ! ${!v} =~ ^[0-9]+$ ]] || printf -v "$v" '%d' "$((10#${!v}))"
  done
}

# check_args: what the option table cannot say, before any configuration or Docker is needed.
check_args() {
  ((opt_node_rank < opt_nnodes)) ||
    die "--node-rank must be in 0..$((opt_nnodes - 1)) for --nnodes $opt_nnodes; got $(q "$opt_node_rank")"
  # Several nodes meet through the rank-0 node's address (each node given its rank) or through a
  # c10d rendezvous (which assigns the ranks: --node-rank conflicts with it in the table).
  if ((opt_nnodes > 1)) && [[ -z $opt_rdzv ]]; then
    local rank="--node-rank R (this node's rank, 0..$((opt_nnodes - 1)))"
    local addr="--master-addr HOST (the rank-0 node's address)"
    if [[ -z $opt_master_addr && -z ${OPT_GIVEN[--node-rank]:-} ]]; then
      die "--nnodes $opt_nnodes needs $rank and $addr, or --rdzv-endpoint HOST:PORT; give them on every node"
    fi
    [[ -n $opt_master_addr ]] || die "--nnodes $opt_nnodes needs $addr, or --rdzv-endpoint HOST:PORT; give it on every node"
    [[ -n ${OPT_GIVEN[--node-rank]:-} ]] || die "--nnodes $opt_nnodes with --master-addr needs $rank; give it on every node"
  fi
  launch_docker_args_check "${docker_extra[@]}"
  # An absolute output path outside /volume is lost with the container (lib/script_support.sh).
  local mode=refuse
  ((opt_outside_volume)) && mode=warn
  script_check_output_paths "$mode" "${script_args[@]}" || exit 1
  return 0
}

# resolve_sharing: sets umask_value (and this process's umask): 077, or 022 with --share.
resolve_sharing() {
  ((opt_share)) && umask_value=022
  umask "$umask_value"
}

# resolve_env: sets env_pairs from the --env NAME[=VALUE] options (checked by the table's env-spec).
resolve_env() {
  local spec
  env_pairs=()
  for spec in "${env_specs[@]}"; do
    if [[ $spec == *=* ]]; then
      env_pairs+=("$spec")
    else
      env_pairs+=("$spec=${!spec}")
    fi
  done
  return 0
}

# resolve_ca_bundle: CA_BUNDLE (any source, a PEM file: the table's pem-file) made absolute for the
# mount (docker_mount_source quotes it: commas and colons are fine).
resolve_ca_bundle() {
  [[ -z $CA_BUNDLE ]] || CA_BUNDLE=$(realpath -e -- "$CA_BUNDLE")
}

# resolve_bucket: sets nothing; checks CHECKPOINT_BUCKET (any source), naming where a bad one came from.
resolve_bucket() {
  [[ -n $CHECKPOINT_BUCKET ]] || return 0
  local why
  why=$(bucket_problem "$CHECKPOINT_BUCKET")
  [[ -z $why ]] ||
    die "$(config_origin CHECKPOINT_BUCKET) $(q "$CHECKPOINT_BUCKET") is not gs://BUCKET/PATH: $why; fix it or unset it"
}

# ------------------------------------------------------------- preflight

# check_docker: the client exists and the daemon answers; sets docker_runtimes.
check_docker() {
  command -v docker >/dev/null 2>&1 ||
    die "docker not found on PATH; install Docker (https://docs.docker.com/engine/install/)" \
      "or use a GCE Deep Learning VM image"
  local out
  if ! out=$(docker version --format '{{.Server.Version}}' 2>&1); then
    if [[ $out == *"permission denied"* ]]; then
      die "no permission to use the Docker daemon; add yourself to the docker group" \
        "(sudo usermod -aG docker \$USER, then log in again)"
    fi
    out=$(grep -v '^[[:space:]]*$' <<<"$out" | tail -n1)
    die "the Docker daemon is not reachable (${out:-no answer}); start it: sudo systemctl start docker"
  fi
  engine_version=$out
  docker_runtimes=$(docker info --format '{{json .Runtimes}}' 2>/dev/null || true)
}

# resolve_volume: sets volume (VOLUME, absolute); checks it is usable. Creates nothing.
resolve_volume() {
  local origin
  [[ -n $VOLUME ]] || config_default VOLUME ./volume
  origin=$(config_origin VOLUME)
  check_volume_links "$VOLUME" "$origin"
  volume=$(realpath -m -- "$VOLUME")
  if [[ -e $volume && ! -d $volume ]]; then
    die "$origin: $(q "$volume") exists but is not a folder; pass --volume DIR"
  fi
  if [[ -d $volume && ! -w $volume ]]; then
    die "volume $volume ($origin) is not writable by uid $(id -u); fix its owner" \
      "(sudo chown -R $(id -u):$(id -g) $volume) or pass --volume DIR"
  fi
  local parent=$volume
  while [[ ! -e $parent ]]; do parent=$(dirname -- "$parent"); done
  [[ -w $parent ]] || die "cannot create the volume folder $volume ($origin): $parent is not writable;" \
    "create it yourself or pass --volume DIR"
  check_free_space "$parent"
}

# check_volume_links PATH ORIGIN: no folder on the way to PATH is a looping or broken symbolic link
# (the shell cannot create a folder under one; "not writable" would name the wrong cause).
check_volume_links() {
  local path=$1 err
  while [[ $path != / && $path != . && -n $path ]]; do
    if [[ -L $path && ! -e $path ]]; then
      err=$(stat -L -- "$path" 2>&1 >/dev/null) || true
      [[ $err != *"Too many levels of symbolic links"* ]] ||
        die "volume $(q "$1") ($2): $(q "$path") is a symbolic link loop; point it at a folder, or pass --volume DIR"
      die "volume $(q "$1") ($2): $(q "$path") is a broken symbolic link (to $(q "$(readlink -- "$path")"));" \
        "create its target, or pass --volume DIR"
    fi
    path=$(dirname -- "$path")
  done
}

# check_free_space DIR: a warning when the disk under DIR is nearly full.
check_free_space() {
  local min_gb free_kb
  to_int min_gb "HFGPU_MIN_FREE_GB from the environment" "${HFGPU_MIN_FREE_GB:-20}" 0
  free_kb=$(df -Pk -- "$1" 2>/dev/null | awk 'NR == 2 { print $4 }') || return 0
  [[ ${free_kb:-x} =~ ^[0-9]+$ ]] || return 0
  if ((free_kb < min_gb * 1024 * 1024)); then
    warn "only $((free_kb / 1024 / 1024)) GiB free under $volume (< ${min_gb} GiB):" \
      "checkpoints and the model cache may fill the disk; free space or grow the disk"
  fi
}

# image_exists REF
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# resolve_image: sets image and image_origin; checks the reference. Pulls and builds nothing.
resolve_image() {
  if [[ -n $CONTAINER_NAME ]]; then
    image=$CONTAINER_NAME
    image_origin=$(config_origin CONTAINER_NAME)
  elif ((opt_build)); then
    image=$(local_image)
    image_origin="IMAGE_NAME:TAG"
  else
    config_default_project
    if [[ -n $PROJECT ]]; then
      image=$(registry_image)
      image_origin="the project's registry image (PROJECT $PROJECT)"
    else
      image=$(local_image)
      image_origin="the local image IMAGE_NAME:TAG"
    fi
  fi
  is_image_ref "$image" ||
    die "$image_origin $(q "$image") is not an image reference (HOST/PROJECT/REPO/IMAGE:TAG, or NAME:TAG);" \
      "fix it, unset it, or pass --image REF"
  if ((opt_build)) && has_registry "$image"; then
    die "--build makes a local image and never tags it with a registry reference ($(q "$image"), $image_origin);" \
      "pass --image NAME:TAG without a registry host, or drop --build"
  fi
  return 0
}

# plan_image: sets image_action: have, pull (a registry reference) or build (the project's own local
# name IMAGE_NAME:TAG, or any local name with --build). Any other absent local name is a typo or an
# image never built: refused here, after every option check and before anything is pulled or built.
plan_image() {
  if ((opt_build)); then
    image_action=build
  elif image_exists "$image"; then
    image_action=have
  elif has_registry "$image"; then
    image_action=pull
  elif [[ $image == "$(local_image)" ]]; then
    image_action=build
  else
    local image_name=$image tag=latest
    [[ ${image##*/} != *:* ]] || image_name=${image%:*} tag=${image##*:}
    die "image $(q "$image") ($image_origin) is not on this machine, and it is not this project's local" \
      "image $(q "$(local_image)"); check the name, build it (IMAGE_NAME=$image_name TAG=$tag" \
      "./build_and_push.sh --no-push, or add --build), or pull it (docker pull HOST/PATH:TAG, then --image" \
      "with that reference)"
  fi
}

# ensure_image: the image is on this machine, as plan_image decided.
ensure_image() {
  case $image_action in
    build) build_locally ;;
    pull) pull_image ;;
  esac
}

# zstd_fix: what to do about a zstd image on an engine older than 23.0.
zstd_fix() {
  local fix="Docker reads zstd layers from 23.0 on and this engine is $engine_version: upgrade Docker on"
  fix+=" this machine (https://docs.docker.com/engine/install/), or push a gzip image (build_and_push.sh"
  printf '%s\n' "$fix --compression gzip, the default) and pass its reference"
}

# check_layer_compression: refuse a zstd image on an engine older than 23.0 (Docker 20.10 fails
# mid-pull with "invalid tar header", which pull_image maps to the same fix); note when neither
# unpigz nor zstd speeds the inflate (docs/cold-start.md). The layers' media types come from the
# registry's manifest; a client that cannot read it (20.10 reads no OCI manifest) says nothing.
check_layer_compression() {
  local manifest insecure=()
  [[ ${image%%/*} == 127.* || ${image%%/*} == localhost:* ]] && insecure=(--insecure)
  manifest=$(docker manifest inspect "${insecure[@]}" "$image" 2>/dev/null) || manifest=''
  if [[ $manifest == *'tar+zstd'* ]]; then
    ! version_lt "${engine_version%%[+-]*}" 23.0 || die "image $image has zstd-compressed layers; $(zstd_fix)"
    return 0
  fi
  command -v unpigz >/dev/null 2>&1 ||
    log "note: unpigz is not on PATH: gzip layers inflate with Docker's slower built-in gzip; for a faster" \
      "pull install pigz (sudo apt-get install -y pigz) or push zstd (build_and_push.sh --compression zstd)"
}

# pull_image: docker pull, with one line saying why it failed and what to do.
pull_image() {
  local host=${image%%/*} err why
  if [[ $host == *.pkg.dev ]] && ! grep -qs "\"$host\"" "${DOCKER_CONFIG:-$HOME/.docker}/config.json"; then
    if command -v gcloud >/dev/null 2>&1; then
      log "configuring docker to pull from $host"
      run_to_stderr gcloud auth configure-docker "$host" --quiet ||
        warn "gcloud auth configure-docker $host failed; the pull may be refused"
    else
      warn "gcloud not found: docker has no credentials for $host; the pull may be refused"
    fi
  fi
  check_layer_compression
  log "pulling $image (Docker engine $engine_version)"
  if [[ $DRY_RUN == 1 ]]; then
    run docker pull "$image"
    return 0
  fi
  err=$(docker pull "$image" 2>&1 >&2) && return 0
  why=$(grep -v '^[[:space:]]*$' <<<"$err" | tail -n1)
  why=${why#docker: }
  why=${why#Error response from daemon: }
  case $err in
    *"Error processing tar file"* | *"invalid tar header"*)
      # Docker 20.10 reads a zstd layer as a tar and fails so ("invalid tar header", "unexpected EOF").
      version_lt "${engine_version%%[+-]*}" 23.0 &&
        die "cannot pull $image: $why; if it was pushed with zstd-compressed layers (build_and_push.sh" \
          "--compression zstd): $(zstd_fix)"
      die "cannot pull $image: $why; a layer does not unpack: push the image again"
      ;;
    *"connection refused"*)
      # Something answered for the host, but nothing listens on the port: the registry is not
      # running there (or the port is wrong); not a question of the VM's route to the internet.
      die "cannot pull $image: nothing listens at $host ($why); check the host and port in the" \
        "reference, or start the registry there, then run again"
      ;;
    *"dial tcp"* | *"no such host"* | *timeout* | *"network is unreachable"* | *"server misbehaving"*)
      is_loopback_host "$host" &&
        die "cannot pull $image: no answer from $host on this machine ($why); start the registry there," \
          "or check the host and port in the reference"
      die "cannot pull $image: no network to $host ($why); check this machine's network and DNS" \
        "(a GCE VM needs an external IP or Cloud NAT), then run again"
      ;;
    *denied* | *unauthorized* | *"authentication required"* | *"no basic auth credentials"* | *forbidden* | \
      *" 403 "*)
      die "cannot pull $image: no access ($why); run gcloud auth configure-docker $host, and give this" \
        "machine's account read access (Artifact Registry Reader on the repository; create_instance.sh does)"
      ;;
    *"not found"* | *"manifest unknown"* | *"name unknown"* | *"does not exist"*)
      die "cannot pull $image: not found in $host ($why); check the reference" \
        "(build_and_push.sh prints it), push the image, or pass --image REF"
      ;;
    *) die "cannot pull $image: $why; check the reference and this machine's access to $host" ;;
  esac
}

# build_locally: the one build path, build_and_push.sh --no-push, for a local reference.
build_locally() {
  [[ -x $HFGPU_ROOT/build_and_push.sh && -f $HFGPU_ROOT/build_image/Dockerfile ]] ||
    die "image $image is not on this machine, and this copy of the launcher has no build_image/ to build it;" \
      "pass --image with a pushed reference (HOST/PROJECT/REPO/IMAGE@sha256:...), or run from a full checkout"
  [[ $image != *@* ]] || die "cannot build $image: a digest names a pushed image; pull it, or pass --image NAME:TAG"
  if [[ -n $BASE_IMAGE ]] && ! is_image_ref "$BASE_IMAGE"; then
    die "$(config_origin BASE_IMAGE) '$BASE_IMAGE' is not an image reference; fix it or unset it"
  fi
  local image_name=$image tag=latest last
  if [[ ${image##*/} == *:* ]]; then
    image_name=${image%:*} tag=${image##*:}
  fi
  local -a cmd=(env "IMAGE_NAME=$image_name" "TAG=$tag")
  [[ -z $CA_BUNDLE ]] || cmd+=("CA_BUNDLE=$CA_BUNDLE")
  cmd+=("$HFGPU_ROOT/build_and_push.sh" --no-push)
  [[ -z $BASE_IMAGE ]] || cmd+=(--base-image "$BASE_IMAGE")
  log "building $image locally with build_and_push.sh --no-push (the first build downloads ~4 GB and takes minutes)"
  if [[ $DRY_RUN == 1 ]]; then
    run "${cmd[@]}"
    return 0
  fi
  last=$("${cmd[@]}" | tail -n1) || die "building $image failed (see above); fix the build or pass --image REF"
  image_exists "$image" || die "build_and_push.sh built ${last:-nothing}, not $image; pass --image $last"
}

# image_scripts: the .py files bundled in the image's /app, one a line.
image_scripts() {
  docker run --rm --network none --entrypoint find "$image" /app -maxdepth 1 -name '*.py' -printf '%f\n' \
    2>/dev/null | sort
}

volume_scripts() {
  [[ -d $volume ]] || return 0
  find "$volume" -maxdepth 1 -name '*.py' -printf '%f\n' 2>/dev/null | sort
}

script_not_found() {
  local bundled=() dropped=()
  image_exists "$image" && mapfile -t bundled < <(image_scripts)
  mapfile -t dropped < <(volume_scripts)
  die "script '$1' not found; bundled in the image: ${bundled[*]:-none}; in $volume: ${dropped[*]:-none};" \
    "shortcuts: bert, gpt2"
}

# in_volume PATH: PATH (symlinks resolved) as a path inside the container; refuses an escape.
in_volume() {
  local abs
  abs=$(realpath -e -- "$1")
  [[ $abs == "$volume"/* ]] ||
    die "script $1 resolves to $abs, outside the volume $volume: copy it there (cp '$abs' '$volume/')" \
      "and pass its name"
  printf '/volume/%s\n' "${abs#"$volume"/}"
}

# resolve_script: sets script_path (inside the container) and app_script (a name in /app, checked later).
resolve_script() {
  local arg=$script_arg
  app_script=''
  case $arg in
    bert)
      app_script=test_training_bert_base.py
      script_path=/app/$app_script
      return 0
      ;;
    gpt2)
      arg=test_training_distillgpt2.py
      if [[ -f $volume/$arg ]]; then
        script_path=$(in_volume "$volume/$arg")
      elif [[ -f $HFGPU_ROOT/volume/$arg ]]; then
        script_path=/volume/$arg # copied in prepare_volume
      else
        script_not_found gpt2
      fi
      return 0
      ;;
  esac
  [[ $arg == *.py ]] || arg=$arg.py
  if [[ $arg == /volume/* && -e $volume/${arg#/volume/} ]]; then
    script_path=$(in_volume "$volume/${arg#/volume/}")
  elif [[ $arg != /* && -e $volume/$arg ]]; then
    script_path=$(in_volume "$volume/$arg")
  elif [[ -f $arg ]]; then
    script_path=$(in_volume "$arg")
  elif [[ $arg == /app/* ]]; then
    app_script=${arg#/app/}
  elif [[ $arg != */* ]]; then
    app_script=$arg
  else
    script_not_found "$script_arg"
  fi
  [[ -z $app_script ]] || script_path=/app/$app_script
}

# check_app_script: a script named for the image's /app is there (needs the image; not in a dry run).
check_app_script() {
  [[ -n $app_script && $DRY_RUN != 1 ]] || return 0
  grep -qxF -- "$app_script" < <(image_scripts) || script_not_found "$script_arg"
}

# nvidia_runtime_present: docker can give containers GPUs (runtime or hook).
nvidia_runtime_present() {
  [[ $docker_runtimes == *'"nvidia"'* ]] && return 0
  command -v nvidia-container-runtime-hook >/dev/null 2>&1
}

# resolve_gpus: sets gpus (--gpus, else all with a runtime and a GPU, else none with a warning).
resolve_gpus() {
  gpus=$opt_gpus
  [[ -z $gpus ]] || return 0
  if ! nvidia_runtime_present; then
    warn "no NVIDIA container runtime in this Docker engine: running on CPU" \
      "(install nvidia-container-toolkit to use GPUs)"
    gpus=none
  elif ! nvidia-smi -L >/dev/null 2>&1; then
    warn "the NVIDIA container runtime is present but nvidia-smi finds no GPU: running on CPU"
    gpus=none
  else
    gpus=all
  fi
}

# image_min_driver: the image's minimum NVIDIA driver (a label, else its MIN_NVIDIA_DRIVER), or ''.
image_min_driver() {
  local label need
  for label in "${DRIVER_LABELS[@]}"; do
    need=$(docker image inspect --format "{{index .Config.Labels \"$label\"}}" "$image" 2>/dev/null || true)
    [[ -z $need || $need == '<no value>' ]] || { printf '%s\n' "$need"; return 0; }
  done
  docker image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" 2>/dev/null |
    sed -n 's/^MIN_NVIDIA_DRIVER=//p' | head -n1
}

# check_driver: with GPUs, the host driver is new enough for the image (needs the image).
check_driver() {
  [[ $gpus != none ]] || return 0
  command -v nvidia-smi >/dev/null 2>&1 || return 0
  local driver need
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 | tr -d '[:space:]') ||
    true
  [[ -n $driver ]] || die "nvidia-smi cannot talk to the NVIDIA driver; install or reload the driver" \
    "(GCE Deep Learning VMs: sudo /opt/deeplearning/install-driver.sh), or pass --gpus none"
  image_exists "$image" || return 0
  need=$(image_min_driver)
  [[ -n $need ]] || return 0
  if version_lt "$driver" "$need"; then
    die "NVIDIA driver $driver is older than the $need that $image needs; upgrade the host driver" \
      "(GCE: a newer Deep Learning VM image), or pass --gpus none"
  fi
  log "NVIDIA driver $driver (the image needs $need or newer)"
}

# ---------------------------------------------------------- the command

# resolve_name: sets owner, name (hfgpu-<user>-<script stem>, or --container-name) and log_file.
resolve_name() {
  owner=$(id -un 2>/dev/null) || owner=$(id -u)
  owner=${owner//[^a-zA-Z0-9_.-]/-}
  if [[ -n $opt_name ]]; then
    name=$opt_name
  else
    local stem=${script_path##*/}
    stem=${stem%.py}
    name=hfgpu-$owner-${stem//[^a-zA-Z0-9_.-]/-}
  fi
  log_file=$volume/logs/$name-$(date +%Y%m%d-%H%M%S).log
}

# check_name_free: a container with this name blocks the launch unless it is a stopped one of ours.
check_name_free() {
  local state who
  state=$(docker inspect --format '{{.State.Status}}' "$name" 2>/dev/null) || return 0
  who=$(docker inspect --format "{{index .Config.Labels \"$OWNER_LABEL\"}}" "$name" 2>/dev/null || true)
  [[ $who != '<no value>' ]] || who=''
  if [[ $who != "$owner" ]]; then
    die "a container named $name already exists and belongs to ${who:-someone else (no $OWNER_LABEL label)};" \
      "the launcher never stops or removes it: pass --container-name NEW"
  fi
  if [[ $state == running || $state == restarting || $state == paused ]]; then
    die "a container named $name is already running; follow it (docker logs -f $name)," \
      "stop it (docker stop $name) or pass --container-name NEW"
  fi
}

# remove_own_stale: a stopped container of ours with this name goes (check_name_free allowed it).
remove_own_stale() {
  docker inspect --format '{{.State.Status}}' "$name" >/dev/null 2>&1 || return 0
  log "removing your stopped container $name"
  run_to_stderr docker rm "$name"
}

# shellcheck disable=SC2329 # run through quietly
# resolve_secrets: sets secret_names: the default and --secret names that are set.
resolve_secrets() {
  local -a all=("${DEFAULT_SECRET_NAMES[@]}" "${extra_secret_names[@]}")
  local n
  secret_names=()
  for n in "${all[@]}"; do
    [[ -z ${!n:-} ]] || secret_names+=("$n")
  done
  for n in "${secret_names[@]}"; do
    [[ ${!n} != *$'\n'* ]] || die "$n contains a newline; a secret must be one line"
  done
  return 0
}

# shellcheck disable=SC2329 # run through quietly
# secrets_parent: a folder only you can enter: $XDG_RUNTIME_DIR, else ~/.cache/hfgpu (made 0700).
# Never /dev/shm: `--ipc host` shares it with every such container on the machine.
secrets_parent() {
  local dir=${XDG_RUNTIME_DIR:-}
  if [[ -n $dir && -d $dir && -O $dir && -w $dir && $(stat -c %a -- "$dir") == 700 ]]; then
    printf '%s\n' "$dir"
    return 0
  fi
  dir=${HOME:?HOME is not set}/.cache/hfgpu
  if [[ $DRY_RUN != 1 ]]; then
    mkdir -p -- "$dir" 2>/dev/null && chmod 700 -- "$dir" 2>/dev/null && [[ -O $dir ]] ||
      die "cannot make the private folder $dir for secrets; set XDG_RUNTIME_DIR to a folder" \
        "only you can enter, or fix the owner of $HOME/.cache"
  fi
  printf '%s\n' "$dir"
}

# shellcheck disable=SC2329 # run through quietly
# write_secrets: sets secrets_dir: a private file (0600) of NAME=VALUE lines the entrypoint exports.
# Runs with xtrace off (see quietly).
write_secrets() {
  ((${#secret_names[@]})) || [[ -n $opt_env_file ]] || return 0
  local base
  base=$(secrets_parent)
  if [[ $DRY_RUN == 1 ]]; then
    secrets_dir="$base/hfgpu-secrets.XXXXXX"
    return 0
  fi
  secrets_dir=$(umask 077 && mktemp -d "$base/hfgpu-secrets.XXXXXX") ||
    die "cannot create a private folder in $base for the secrets; set XDG_RUNTIME_DIR to a private folder"
  owns_secrets=1
  local file=$secrets_dir/env n line
  (
    umask 077
    : >"$file"
    for n in "${secret_names[@]}"; do
      printf '%s=%s\n' "$n" "${!n}" >>"$file"
    done
    if [[ -n $opt_env_file ]]; then
      while IFS= read -r line || [[ -n $line ]]; do
        if kv_parse "$line"; then
          printf '%s=%s\n' "$KV_KEY" "$KV_VALUE" >>"$file"
        elif [[ ${line%$'\r'} =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*$ && -n ${!BASH_REMATCH[1]:-} ]]; then
          printf '%s=%s\n' "${BASH_REMATCH[1]}" "${!BASH_REMATCH[1]}" >>"$file"
        fi
      done <"$opt_env_file"
    fi
  )
}

# shellcheck disable=SC2329 # run by trap
cleanup() {
  if ((owns_secrets)) && [[ -n $secrets_dir ]]; then
    rm -rf -- "$secrets_dir"
  fi
  [[ -z $src_copy ]] || rm -rf -- "$src_copy"
  return 0
}

# fetch_app_source: sets script_src for a script bundled in the image's /app when this machine
# has no app/ folder (the files create_instance.sh copies to a VM): a copy read from the image,
# so that lib/script_support.sh judges the program that runs (ours: it saves and resumes).
fetch_app_source() {
  [[ -n $app_script && $DRY_RUN != 1 && ! -f $script_src ]] || return 0
  src_copy=$(mktemp -d "${TMPDIR:-/tmp}/hfgpu-src.XXXXXX")
  if docker run --rm --network none --entrypoint cat "$image" "$script_path" >"$src_copy/$app_script" 2>/dev/null; then
    script_src=$src_copy/$app_script
  fi
}

# memlock_cache_file: where this engine's answer to --ulimit memlock=-1 is kept (one per engine ID).
# Status 1 when there is none: no engine ID, or neither XDG_CACHE_HOME nor HOME (cron, some units).
memlock_cache_file() {
  local id base=${XDG_CACHE_HOME:-${HOME:+$HOME/.cache}}
  [[ -n $base ]] || return 1
  id=$(docker info --format '{{.ID}}' 2>/dev/null) || return 1
  id=${id//[^A-Za-z0-9]/_}
  [[ -n $id ]] || return 1
  printf '%s/hfgpu-engines/memlock-%s\n' "$base" "$id"
}

# memlock_keep VALUE: cache this engine's answer (0 or 1), replaced whole: a launch beside this one
# reads the old answer or the new one, never a half-written file.
memlock_keep() {
  local cache
  cache=$(memlock_cache_file) || return 0
  mkdir -p -- "${cache%/*}" 2>/dev/null || return 0
  printf '%s\n' "$1" >"$cache.$$" 2>/dev/null && mv -f -- "$cache.$$" "$cache" 2>/dev/null ||
    rm -f -- "$cache.$$" 2>/dev/null || true
}

# resolve_memlock: sets memlock before the command is printed, so the printed command is the one
# that runs: 1 when this engine grants --ulimit memlock=-1, 0 when it refuses. Probed with a
# throw-away container of the image; a real launch caches the answer per engine (memlock_cache_file).
resolve_memlock() {
  local cache err
  if cache=$(memlock_cache_file) && [[ -f $cache ]]; then
    [[ $(<"$cache") == 0 ]] && memlock=0
    return 0
  fi
  # A dry run before the image is here probes with any image the engine has: the engine sets the
  # limit before it looks for the program, so "executable file not found" means granted too.
  local probe=$image ids
  if ! image_exists "$image"; then
    ids=$(docker image ls --quiet 2>/dev/null) || ids=''
    probe=${ids%%$'\n'*}
    [[ -n $probe ]] || return 0 # an engine with no image at all: unknown, assumed granted
  fi
  if err=$(docker run --rm --network none --ulimit memlock=-1 --entrypoint true "$probe" 2>&1 >/dev/null); then
    memlock=1
  elif [[ $err == *"$MEMLOCK_REFUSED"* ]]; then
    memlock=0
  elif [[ $probe != "$image" && $err == *"executable file not found"* ]]; then
    memlock=1
  else
    return 0 # another failure: decide nothing, cache nothing
  fi
  [[ $DRY_RUN == 1 ]] && return 0 # a dry run writes nothing
  memlock_keep "$memlock"
}

# forget_memlock: the engine refused memlock after all (its settings changed): cache the refusal.
forget_memlock() {
  memlock_keep 0
}

# docker_engine_args: the client options that name this engine (DOCKER_HOST, DOCKER_CONTEXT), so
# that the printed command, pasted in another shell, talks to the same engine.
docker_engine_args() {
  if [[ -n ${DOCKER_HOST:-} ]]; then
    printf '%s\n' --host "$DOCKER_HOST"
  elif [[ -n ${DOCKER_CONTEXT:-} ]]; then
    printf '%s\n' --context "$DOCKER_CONTEXT"
  fi
}

# read_script_args: SCRIPT_FACTS (lib/script_support.sh) for a Trainer-style script: the image's
# hf_script_args.py reads its arguments as HfArgumentParser does (config file, dash spellings,
# --flag=value), in a throw-away container that sees the volume read-only. Then the output folder
# is checked as check_args checked the command line. Our programs, scripts that do not use
# HfArgumentParser, and images without the helper keep the launcher's own reading.
read_script_args() {
  script_uses_trainkit "$script_src" && return 0
  script_reads_hf_args "$script_src" || return 0
  image_exists "$image" || return 0
  local out mode=refuse
  local -a cmd=(docker run --rm --network none --user "$(id -u):$(id -g)" --entrypoint python3)
  [[ -d $volume ]] && cmd+=(--mount "type=bind,$(docker_mount_source "$volume"),target=/volume,readonly")
  cmd+=("$image" "$HF_ARGS_HELPER" --format lines -- "${script_args[@]}")
  out=$("${cmd[@]}" 2>/dev/null) || return 0
  script_facts_read "$out"
  ((opt_outside_volume)) && mode=warn
  script_check_facts "$mode" || exit 1
}

# resolve_bucket_hook: with CHECKPOINT_BUCKET, how a script that is not ours gets its checkpoints
# there: the image's hook (HFGPU_TRAINER_BUCKET=1: every transformers Trainer in the process) for a
# script that trains with a Trainer; a refusal for any other, which would upload nothing.
resolve_bucket_hook() {
  bucket_hook=0
  [[ -n $CHECKPOINT_BUCKET ]] || return 0
  script_uses_trainkit "$script_src" && return 0
  [[ -f $script_src ]] && grep -qE '(import|from) bucket_checkpoints' "$script_src" && return 0
  if ! script_uses_trainer "$script_src"; then
    die "--checkpoint-bucket: ${script_src##*/} does not train with a transformers Trainer, so nothing" \
      "would reach $CHECKPOINT_BUCKET; drop the flag, or from your own loop call bucket_checkpoints" \
      "(docs/bring-your-own-script.md: upload each checkpoint folder, its marker last)"
  fi
  bucket_hook=1
  log "checkpoint bucket: the image mirrors the checkpoints of every transformers Trainer in" \
    "${script_src##*/} to $CHECKPOINT_BUCKET (and restores the newest into an empty output folder)"
}

# write_config_copy CHECKPOINT: sets config_copy: a private copy (0600, VOLUME/.hfgpu/resume/) of the
# script's JSON/YAML config that adds resume_from_checkpoint CHECKPOINT, written by the image's helper.
write_config_copy() {
  local source=${SCRIPT_FACTS[config]} ext copy err
  ext=${source##*.}
  copy=/volume/$CONFIG_COPY_DIR/$name.$ext
  if ! err=$(docker run --rm --network none --user "$(id -u):$(id -g)" --entrypoint python3 \
    --mount "type=bind,$(docker_mount_source "$volume"),target=/volume" \
    "$image" "$HF_ARGS_HELPER" --resume-config "$copy" --checkpoint "$1" -- "$source" 2>&1); then
    # The restart's one line must not promise a resume that will not happen.
    SCRIPT_RESUME_NOTE="starting it again with its own $source, FROM STEP 0 unless it resumes by itself:"
    SCRIPT_RESUME_NOTE+=" cannot write a resume copy in VOLUME/$CONFIG_COPY_DIR (${err##*$'\n'})"
    config_copy=''
    return 0
  fi
  config_copy=$copy
}

# docker_mount_source PATH: PATH as a quoted CSV field of --mount (',' and '"' survive).
docker_mount_source() {
  printf '"source=%s"' "${1//\"/\"\"}"
}

# build_run_cmd: sets run_cmd, the docker run command: the script's own arguments, then
# resume_args (a restart's --resume_from_checkpoint, never added twice).
build_run_cmd() {
  local -a engine=()
  mapfile -t engine < <(docker_engine_args)
  run_cmd=(docker "${engine[@]}" run --detach --name "$name"
    --label "$OWNER_LABEL=$owner"
    --label "$LAUNCH_LABEL=$launch_id"
    --user "$(id -u):$(id -g)"
    --ipc host
    --ulimit stack=67108864
    --stop-timeout "$opt_stop_timeout"
    --mount "type=bind,$(docker_mount_source "$volume"),target=/volume"
    --env "HFGPU_UMASK=$umask_value")
  # Unlimited locked memory, as NVIDIA recommends for NCCL; an engine without
  # CAP_SYS_RESOURCE (some sandboxes, rootless Docker) cannot grant it.
  ((memlock)) && run_cmd+=(--ulimit memlock=-1)
  [[ $gpus == none ]] || run_cmd+=(--gpus "$(docker_gpus_value)")
  local network=$opt_network pair
  [[ -z $network ]] && ((opt_nnodes > 1)) && network=host
  [[ -n $network ]] && run_cmd+=(--network "$network")
  [[ -n $opt_nproc ]] && run_cmd+=(--env "NPROC_PER_NODE=$opt_nproc")
  if ((opt_nnodes > 1)) || [[ -n $opt_rdzv ]]; then
    run_cmd+=(--env "NNODES=$opt_nnodes" --env "NODE_RANK=$opt_node_rank")
    [[ -n $opt_master_addr ]] && run_cmd+=(--env "MASTER_ADDR=$opt_master_addr")
    [[ -n $opt_master_port ]] && run_cmd+=(--env "MASTER_PORT=$opt_master_port")
    [[ -n $opt_rdzv ]] && run_cmd+=(--env "RDZV_ENDPOINT=$opt_rdzv")
  fi
  # Without a network the Hugging Face libraries must not wait on the hub.
  [[ $network == none ]] && run_cmd+=(--env HF_HUB_OFFLINE=1 --env HF_DATASETS_OFFLINE=1)
  [[ -z $CHECKPOINT_BUCKET ]] || run_cmd+=(--env "CHECKPOINT_BUCKET=$CHECKPOINT_BUCKET")
  ((bucket_hook)) && run_cmd+=(--env HFGPU_TRAINER_BUCKET=1)
  # Runtime installs (HFGPU_PIP_REQUIREMENTS) behind a TLS-intercepting proxy trust the same bundle.
  if [[ -n $CA_BUNDLE ]]; then
    run_cmd+=(--mount "type=bind,$(docker_mount_source "$CA_BUNDLE"),target=$CA_MOUNT,readonly"
      --env "HFGPU_CA_BUNDLE=$CA_MOUNT")
  fi
  for pair in "${env_pairs[@]}"; do
    run_cmd+=(--env "$pair")
  done
  if [[ -n $secrets_dir ]]; then
    run_cmd+=(--mount "type=bind,$(docker_mount_source "$secrets_dir"),target=$SECRETS_MOUNT,readonly"
      --env "HFGPU_SECRETS_FILE=$SECRETS_MOUNT/env")
  fi
  if [[ -n $config_copy ]]; then
    run_cmd+=("${docker_extra[@]}" "$image" train "$script_path" "$config_copy")
  else
    run_cmd+=("${docker_extra[@]}" "$image" train "$script_path" "${script_args[@]}" "${resume_args[@]}")
  fi
}

docker_gpus_value() {
  case $gpus in
    device=*) printf '"%s"' "$gpus" ;;
    *) printf '%s' "$gpus" ;;
  esac
}

# ------------------------------------------------------------ running it

# prepare_volume: the volume and its logs folder (0700, or 0755 with --share); the gpt2 copy.
prepare_volume() {
  if [[ ! -d $volume ]]; then
    run mkdir -p -- "$volume"
    [[ $DRY_RUN == 1 ]] || log "created the volume folder $volume"
  fi
  local mode=700
  ((opt_share)) && mode=755
  run mkdir -p -- "$volume/logs"
  if [[ $DRY_RUN != 1 && -O $volume/logs ]]; then
    chmod "$mode" -- "$volume/logs"
  fi
  if [[ $script_arg == gpt2 && ! -f $volume/test_training_distillgpt2.py ]]; then
    log "copying test_training_distillgpt2.py from $HFGPU_ROOT/volume into $volume"
    run cp -- "$HFGPU_ROOT/volume/test_training_distillgpt2.py" "$volume/test_training_distillgpt2.py"
  fi
  return 0
}

# note MESSAGE: a progress line on stderr and in the run's log file.
note() {
  log "$@"
  # Detached, stderr is the log file already.
  ((opt_detach)) || printf '%s: %s\n' "$PROG" "$*" >>"$log_file" 2>/dev/null || true
}

# remove_failed_start: the containers this launch created but docker could not start (found by
# this launch's own label, whatever their name), so that a retry leaves no first one behind.
remove_failed_start() {
  local id
  for id in $(docker ps --all --quiet --filter "label=$LAUNCH_LABEL=$launch_id" --filter status=created \
    2>/dev/null); do
    docker rm --force "$id" >/dev/null 2>&1 || true
  done
}

# start_container: sets container_id and run_start; a failure leaves nothing behind.
start_container() {
  local err line
  run_start=$(date +%s)
  if ! err=$("${run_cmd[@]}" 2>&1 >/dev/null); then
    line=$(grep -m1 'Error response from daemon' <<<"$err" || grep -m1 -v '^[[:space:]]*$' <<<"$err" || true)
    line=${line#docker: }
    line=${line#Error response from daemon: }
    remove_failed_start
    # Only the memlock limit (RLIMIT_MEMLOCK, type 8 in runc's message) is retried without:
    # another limit given through --docker-arg=--ulimit is the caller's to fix.
    if ((memlock)) && [[ $err == *"$MEMLOCK_REFUSED"* ]]; then
      warn "this Docker engine cannot raise the locked-memory limit (memlock=-1); running with its default" \
        "(multi-node NCCL over RDMA may be slower)"
      memlock=0
      forget_memlock
      build_run_cmd
      start_container
      return 0
    fi
    if [[ $gpus != none && $err == *"device driver"* ]]; then
      die "docker cannot give the container GPUs: ${line%.}; install the NVIDIA container toolkit, then" \
        "sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker; or pass --gpus none"
    fi
    die "docker could not start the container: ${line:-exit status of docker run}"
  fi
  container_id=$(docker inspect --format '{{.Id}}' "$name" 2>/dev/null || echo "$name")
}

# shellcheck disable=SC2329 # run by trap
on_stop_signal() {
  stopping=1
  log "stopping $name (up to ${opt_stop_timeout}s): $(script_stop_note "$script_src" "${script_args[@]}")"
  [[ -z $container_id ]] || docker stop --time "$opt_stop_timeout" "$container_id" >/dev/null 2>&1 || true
}

# follow_logs: the container's output into the log file (and to stdout in the foreground).
follow_logs() {
  if ((opt_detach)); then
    docker logs --follow "$container_id" >>"$log_file" 2>&1 || true
  else
    docker logs --follow "$container_id" 2>&1 | tee -a "$log_file" || true
  fi
}

# container_exit_code: wait for the container, tolerating a daemon restart.
container_exit_code() {
  local tries=0 code
  until code=$(docker wait "$container_id" 2>/dev/null); do
    # Removed by someone else (the daemon answers, the container is gone): no status.
    if docker version >/dev/null 2>&1 && ! docker container inspect "$container_id" >/dev/null 2>&1; then
      echo 255
      return 0
    fi
    ((++tries <= 60)) || { echo 255; return 0; }
    sleep 2
  done
  echo "$code"
}

# supervise: follow, wait, remove; run again after a preemption when asked.
supervise() {
  trap on_stop_signal TERM
  ((opt_detach)) || trap on_stop_signal INT
  local restarts=0 code oom follower
  while true; do
    follow_logs &
    follower=$!
    while kill -0 "$follower" 2>/dev/null; do
      wait "$follower" || true
    done
    code=$(container_exit_code)
    oom=$(docker inspect --format '{{.State.OOMKilled}}' "$container_id" 2>/dev/null || echo false)
    docker rm --force "$container_id" >/dev/null 2>&1 || true
    [[ $oom == true ]] && note "$name ran out of memory (OOM-killed); use a smaller batch size or a larger machine"
    if ((opt_restart && !stopping)) && [[ $oom != true ]] &&
      [[ $code == "$PREEMPTED_EXIT" || $code == 137 || $code == 143 ]]; then
      if ((restarts < opt_max_restarts)); then
        restarts=$((restarts + 1))
        script_resume_plan "$script_src" "$volume" "${script_args[@]}"
        resume_args=("${SCRIPT_RESUME_ARGS[@]}") config_copy=''
        [[ -z $SCRIPT_RESUME_CONFIG ]] || write_config_copy "$SCRIPT_RESUME_CONFIG"
        note "$name exited $code; $SCRIPT_RESUME_NOTE ($restarts/$opt_max_restarts)"
        build_run_cmd
        start_container
        continue
      fi
      note "$name exited $code; --max-restarts $opt_max_restarts reached, giving up"
    fi
    break
  done
  report_outcome "$code"
  return "$code"
}

# report_outcome CODE: the last line of a run. Our programs' exit codes are exact; for any
# other script "finished" is said only when the run says it finished (script_run_outcome).
report_outcome() {
  local code=$1 outcome
  if ! script_uses_trainkit "$script_src"; then
    if outcome=$(script_run_outcome "$volume" "$code" "$run_start" "${script_args[@]}"); then
      note "$name $outcome; outputs in $(script_outputs_where "$volume" "${script_args[@]}"), log in $log_file"
    else
      note "$name $outcome; see $log_file"
    fi
    return 0
  fi
  local where=$volume # trainkit's default output folder is VOLUME/<model name>
  if script_arg_value output_dir "${script_args[@]}" >/dev/null; then
    where=$(script_outputs_where "$volume" "${script_args[@]}")
  fi
  case $code in
    0) note "$name finished; outputs in $where, log in $log_file" ;;
    "$PREEMPTED_EXIT") note "$name stopped after saving a checkpoint (exit 75); run the same command again to resume" ;;
    *) note "$name failed with exit code $code; see $log_file" ;;
  esac
}

main() {
  opt_help_first "$@"
  # A .env file may hold secrets too: its lines are not traced.
  quietly config_init
  parse_args "$@"
  check_args
  resolve_sharing
  resolve_env
  resolve_bucket
  resolve_ca_bundle
  quietly resolve_secrets
  check_docker
  resolve_volume
  resolve_image
  plan_image
  resolve_script
  script_src=$(script_host_path "$script_path" "$volume") || script_src=''
  resolve_bucket_hook
  resolve_gpus
  resolve_name
  check_name_free
  # Every check above changed nothing; from here on the launcher acts.
  ensure_image
  check_app_script
  check_driver
  read_script_args
  prepare_volume
  remove_own_stale
  trap cleanup EXIT
  fetch_app_source
  quietly write_secrets
  resolve_memlock
  build_run_cmd
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "${run_cmd[@]}"
    return 0
  fi
  log "running: $(quote_cmd "${run_cmd[@]}")"
  log "log file: $log_file"
  ((opt_detach)) || trap on_stop_signal INT TERM
  local stop_note
  stop_note=$(script_stop_note "$script_src" "${script_args[@]}")
  start_container
  if ((opt_detach)); then
    (
      trap '' HUP INT
      trap cleanup EXIT
      supervise
    ) </dev/null >>"$log_file" 2>&1 &
    owns_secrets=0 src_copy=''
    log "started $name in the background (supervisor pid $!)"
    log "follow: tail -f $log_file   (or: docker logs -f $name)"
    log "stop:   kill $! ($stop_note; with --restart-on-preemption, docker stop $name would restart it)"
    return 0
  fi
  log "stop:   Ctrl-C or docker stop $name ($stop_note)"
  local code=0
  supervise || code=$?
  return "$code"
}

# `exit` on the same line: bash reads a script as it runs, so a file edited (or
# updated by git pull) during a long run must not be read again after main returns.
main "$@"; exit
