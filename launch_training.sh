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
# Everything after `--` goes to the script unchanged.
#
# Options
#   --image REF         image to run (default: CONTAINER_NAME, else the Artifact
#                       Registry image when PROJECT is known, else IMAGE_NAME:TAG);
#                       pulled when absent, built from build_image/ when found nowhere
#   --volume DIR        host folder mounted at /volume (default: VOLUME, else ./volume)
#   --gpus all|N|none|device=I,J
#                       GPUs to give the container (default: all when the NVIDIA
#                       container runtime is present, else a warning and CPU)
#   --nproc N|auto      processes on this node (default auto: one per visible GPU)
#   --nnodes N          nodes in the job (default 1); then also:
#   --node-rank R       this node's rank, 0..N-1
#   --master-addr HOST  the rank-0 node's address      --master-port P (29500)
#   --rdzv-endpoint H:P a c10d rendezvous instead of --master-addr/--master-port
#   --network NET       docker network (default: docker's bridge; host when --nnodes > 1)
#   --name NAME         container name (default: hfgpu-<script name>)
#   --detach            return once started; logs still go to VOLUME/logs/
#   --restart-on-preemption
#                       run again (resuming) when the program exits 75 ("preempted,
#                       checkpoint saved") or the container is killed (137/143)
#   --max-restarts N    bound for --restart-on-preemption (default 10)
#   --env-file FILE     NAME=VALUE lines for the program, passed privately like secrets
#   --secret NAME       one more environment variable to pass as a secret (repeatable)
#   --stop-timeout S    seconds `docker stop` waits for the checkpoint (default 120)
#   --docker-arg ARG    one extra `docker run` argument, as is (repeatable)
#   --dry-run           print the docker commands, run nothing
#   -h, --help          this help
#
# Secrets: HF_TOKEN, HUGGING_FACE_HUB_TOKEN, WANDB_API_KEY, COMET_API_KEY,
# NEPTUNE_API_TOKEN, MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_PASSWORD (when set)
# reach the program through a file in a private tmpfs folder, mounted read-only;
# never through the command line, docker inspect, the logs or the volume.
# Exit status: the program's (75 = preempted after a complete checkpoint; run the
# same command again to resume), or 1 with one line on stderr when a check fails.
# Environment: HFGPU_MIN_FREE_GB (default 20) free-disk warning threshold;
# BASE_IMAGE and CA_BUNDLE for the fallback local build; see lib/common.sh.

set -euo pipefail

# lib/common.sh is linted on its own (make lint runs shellcheck without -x).
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

readonly PROG=launch_training.sh
readonly PREEMPTED_EXIT=75
readonly SECRETS_MOUNT=/run/hfgpu-secrets
readonly DEFAULT_SECRET_NAMES=(HF_TOKEN HUGGING_FACE_HUB_TOKEN WANDB_API_KEY COMET_API_KEY
  NEPTUNE_API_TOKEN MLFLOW_TRACKING_TOKEN MLFLOW_TRACKING_PASSWORD)
readonly DRIVER_LABEL=ai.gpu-transformers.min-nvidia-driver
readonly OWNER_LABEL=ai.gpu-transformers.launcher

# Settings, filled by parse_args and the resolve_* functions.
opt_image='' opt_volume='' opt_gpus='' opt_nproc='' opt_nnodes=1 opt_node_rank=0
opt_master_addr='' opt_master_port='' opt_rdzv='' opt_network='' opt_name=''
opt_detach=0 opt_restart=0 opt_max_restarts=10 opt_env_file='' opt_stop_timeout=120
script_arg=bert
script_args=() docker_extra=() secret_names=()
volume='' image='' script_path='' gpus='' log_file='' secrets_dir=''
owns_secrets=0 stopping=0 memlock=1

# ---------------------------------------------------------------- helpers

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_posint() { is_uint "$1" && (($1 >= 1)); }
rank_ok() { is_uint "$opt_node_rank" && ((opt_node_rank < opt_nnodes)); }
is_port() { is_uint "$1" && (($1 >= 1 && $1 <= 65535)); }

# version_lt A B: A is an older version than B (dotted numbers).
version_lt() {
  [[ $1 != "$2" && $(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1) == "$1" ]]
}

# need_value FLAG COUNT: the flag has a value after it.
need_value() {
  (($2 >= 2)) || die "$1 needs a value; see $PROG --help"
}

# ------------------------------------------------------------- arguments

parse_args() {
  local positional=0
  while (($#)); do
    case $1 in
      -h | --help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
      --image) need_value "$1" $#; opt_image=$2; shift ;;
      --volume) need_value "$1" $#; opt_volume=$2; shift ;;
      --gpus) need_value "$1" $#; opt_gpus=$2; shift ;;
      --nproc) need_value "$1" $#; opt_nproc=$2; shift ;;
      --nnodes) need_value "$1" $#; opt_nnodes=$2; shift ;;
      --node-rank) need_value "$1" $#; opt_node_rank=$2; shift ;;
      --master-addr) need_value "$1" $#; opt_master_addr=$2; shift ;;
      --master-port) need_value "$1" $#; opt_master_port=$2; shift ;;
      --rdzv-endpoint) need_value "$1" $#; opt_rdzv=$2; shift ;;
      --network) need_value "$1" $#; opt_network=$2; shift ;;
      --name) need_value "$1" $#; opt_name=$2; shift ;;
      --detach) opt_detach=1 ;;
      --restart-on-preemption) opt_restart=1 ;;
      --max-restarts) need_value "$1" $#; opt_max_restarts=$2; shift ;;
      --env-file) need_value "$1" $#; opt_env_file=$2; shift ;;
      --secret) need_value "$1" $#; secret_names+=("$2"); shift ;;
      --stop-timeout) need_value "$1" $#; opt_stop_timeout=$2; shift ;;
      --docker-arg) need_value "$1" $#; docker_extra+=("$2"); shift ;;
      --docker-arg=*) docker_extra+=("${1#--docker-arg=}") ;;
      --dry-run) DRY_RUN=1 ;;
      --) shift; script_args=("$@"); break ;;
      -*) die "unknown option $1; see $PROG --help" ;;
      *)
        ((positional == 0)) || die "unexpected argument '$1': give one SCRIPT; its own arguments go after --"
        script_arg=$1
        positional=1
        ;;
    esac
    shift
  done
  validate_args
}

validate_args() {
  case $opt_gpus in
    '' | all | none | device=*) ;;
    *) is_posint "$opt_gpus" || die "--gpus must be all, none, a count or device=I,J; got '$opt_gpus'" ;;
  esac
  if [[ -n $opt_nproc && $opt_nproc != auto ]]; then
    is_posint "$opt_nproc" || die "--nproc must be a positive number or auto; got '$opt_nproc'"
  fi
  is_posint "$opt_nnodes" || die "--nnodes must be a positive number; got '$opt_nnodes'"
  rank_ok || die "--node-rank must be in 0..$((opt_nnodes - 1)); got '$opt_node_rank'"
  if ((opt_nnodes > 1)) && [[ -z $opt_master_addr && -z $opt_rdzv ]]; then
    die "--nnodes $opt_nnodes needs --master-addr HOST (the rank-0 node's address) or --rdzv-endpoint HOST:PORT"
  fi
  if [[ -n $opt_master_port ]]; then
    is_port "$opt_master_port" || die "--master-port must be a port number; got '$opt_master_port'"
  fi
  is_uint "$opt_max_restarts" || die "--max-restarts must be a number; got '$opt_max_restarts'"
  is_uint "$opt_stop_timeout" || die "--stop-timeout must be a number of seconds; got '$opt_stop_timeout'"
  if [[ -n $opt_name && ! $opt_name =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ ]]; then
    die "--name '$opt_name' is not a valid container name; use letters, digits, '_', '.', '-'"
  fi
  if [[ -n $opt_env_file && ! -r $opt_env_file ]]; then
    die "--env-file $opt_env_file is not a readable file; check the path"
  fi
  local name
  for name in "${secret_names[@]}"; do
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--secret takes a variable name; got '$name'"
  done
  return 0
}

# ------------------------------------------------------------- preflight

# check_docker: the client exists and the daemon answers; sets docker_runtimes.
docker_runtimes=''
check_docker() {
  command -v docker >/dev/null 2>&1 ||
    die "docker not found on PATH; install Docker (https://docs.docker.com/engine/install/) or use a GCE Deep Learning VM image"
  local out
  if ! out=$(docker version --format '{{.Server.Version}}' 2>&1); then
    if [[ $out == *"permission denied"* ]]; then
      die "no permission to use the Docker daemon; add yourself to the docker group (sudo usermod -aG docker \$USER, then log in again)"
    fi
    out=$(grep -v '^[[:space:]]*$' <<<"$out" | tail -n1)
    die "the Docker daemon is not reachable (${out:-no answer}); start it: sudo systemctl start docker"
  fi
  docker_runtimes=$(docker info --format '{{json .Runtimes}}' 2>/dev/null || true)
}

resolve_volume() {
  volume=${opt_volume:-${VOLUME:-./volume}}
  volume=$(realpath -m -- "$volume")
  if [[ ! -d $volume ]]; then
    [[ -e $volume ]] && die "volume $volume exists but is not a folder; pass --volume DIR"
    if [[ $DRY_RUN == 1 ]]; then
      log "would create the volume folder $volume"
    else
      mkdir -p -- "$volume" 2>/dev/null || die "cannot create the volume folder $volume; create it yourself or pass --volume DIR"
      log "created the volume folder $volume"
    fi
  fi
  if [[ -d $volume && ! -w $volume ]]; then
    die "volume $volume is not writable by uid $(id -u); fix its owner (sudo chown -R $(id -u):$(id -g) $volume) or pass --volume DIR"
  fi
  check_free_space
}

check_free_space() {
  local min_gb=${HFGPU_MIN_FREE_GB:-20} free_kb probe=$volume
  [[ -d $probe ]] || probe=$(dirname "$probe")
  free_kb=$(df -Pk -- "$probe" 2>/dev/null | awk 'NR == 2 { print $4 }') || return 0
  is_uint "${free_kb:-x}" || return 0
  if ((free_kb < min_gb * 1024 * 1024)); then
    warn "only $((free_kb / 1024 / 1024)) GiB free under $volume (< ${min_gb} GiB): checkpoints and the model cache may fill the disk; free space or grow the disk"
  fi
}

# image_exists REF
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# has_registry REF: the reference names a registry host (so pulling can work).
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
    config_default_project
    if [[ -n $PROJECT ]]; then
      image=$(registry_image)
    else
      image=$(local_image)
    fi
  fi
  image_exists "$image" && return 0
  if has_registry "$image"; then
    local host=${image%%/*}
    if [[ $host == *.pkg.dev ]] && ! grep -qs "\"$host\"" "${DOCKER_CONFIG:-$HOME/.docker}/config.json"; then
      if command -v gcloud >/dev/null 2>&1; then
        log "configuring docker to pull from $host"
        run_to_stderr gcloud auth configure-docker "$host" --quiet || warn "gcloud auth configure-docker $host failed; the pull may be refused"
      else
        warn "gcloud not found: docker has no credentials for $host; the pull may be refused"
      fi
    fi
    log "pulling $image"
    if run_to_stderr docker pull "$image"; then
      return 0
    fi
    warn "could not pull $image"
  fi
  build_image_locally
}

build_image_locally() {
  local dockerfile=$HFGPU_ROOT/build_image/Dockerfile
  [[ -f $dockerfile ]] ||
    die "image $image is not on this machine and could not be pulled; push it with build_and_push.sh, or pass --image REF"
  log "image $image is not on this machine nor in a registry it can reach: building it from build_image/ (the first build downloads ~4 GB and takes minutes)"
  local -a cmd=(env DOCKER_BUILDKIT=1 docker build -f "$dockerfile" -t "$image")
  [[ -n ${BASE_IMAGE:-} ]] && cmd+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  [[ -n ${CA_BUNDLE:-} ]] && cmd+=(--secret "id=ca_bundle,src=$CA_BUNDLE")
  cmd+=("$HFGPU_ROOT")
  run_to_stderr "${cmd[@]}" ||
    die "building $image failed (see above); fix the build or pass --image REF of an image you have"
}

# image_scripts: the .py files bundled in the image's /app, one a line.
image_scripts() {
  docker run --rm --network none --entrypoint find "$image" /app -maxdepth 1 -name '*.py' -printf '%f\n' 2>/dev/null | sort
}

volume_scripts() {
  [[ -d $volume ]] || return 0
  find "$volume" -maxdepth 1 -name '*.py' -printf '%f\n' 2>/dev/null | sort
}

script_not_found() {
  local bundled=() dropped=()
  image_exists "$image" && mapfile -t bundled < <(image_scripts)
  mapfile -t dropped < <(volume_scripts)
  die "script '$1' not found; bundled in the image: ${bundled[*]:-none}; in $volume: ${dropped[*]:-none}; shortcuts: bert, gpt2"
}

# resolve_script: script_arg -> script_path (a path inside the container).
resolve_script() {
  local arg=$script_arg app_name=''
  case $arg in
    bert) app_name=test_training_bert_base.py ;;
    gpt2)
      arg=test_training_distillgpt2.py
      if [[ ! -f $volume/$arg && -f $HFGPU_ROOT/volume/$arg ]]; then
        [[ $HFGPU_ROOT/volume -ef $volume ]] || {
          log "copying $arg from $HFGPU_ROOT/volume into $volume"
          run cp -- "$HFGPU_ROOT/volume/$arg" "$volume/$arg"
        }
      fi
      [[ -f $volume/$arg || $DRY_RUN == 1 ]] || script_not_found gpt2
      script_path=/volume/$arg
      return 0
      ;;
  esac
  if [[ -z $app_name ]]; then
    [[ $arg == *.py ]] || arg=$arg.py
    local abs
    if [[ $arg == /volume/* && -f $volume/${arg#/volume/} ]]; then
      script_path=$arg
      return 0
    elif [[ $arg != /* && -f $volume/$arg ]]; then
      abs=$(realpath -- "$volume/$arg")
    elif [[ -f $arg ]]; then
      abs=$(realpath -- "$arg")
    elif [[ $arg == /app/* ]]; then
      app_name=${arg#/app/}
    elif [[ $arg != */* ]]; then
      app_name=$arg
    else
      script_not_found "$script_arg"
    fi
    if [[ -n ${abs:-} ]]; then
      [[ $abs == "$volume"/* ]] ||
        die "script $abs is outside the volume $volume: copy it there (cp '$abs' '$volume/') and pass its name"
      script_path=/volume/${abs#"$volume"/}
      return 0
    fi
  fi
  # A dry run starts no container, not even the one that lists /app.
  if [[ $DRY_RUN != 1 ]] && image_exists "$image"; then
    grep -qxF -- "$app_name" < <(image_scripts) || script_not_found "$script_arg"
  fi
  script_path=/app/$app_name
}

# nvidia_runtime_present: docker can give containers GPUs (runtime or hook).
nvidia_runtime_present() {
  [[ $docker_runtimes == *'"nvidia"'* ]] && return 0
  command -v nvidia-container-runtime-hook >/dev/null 2>&1
}

# check_driver: the host driver is new enough for the image's CUDA runtime.
check_driver() {
  command -v nvidia-smi >/dev/null 2>&1 || return 0
  local driver need
  if ! driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 | tr -d '[:space:]') || [[ -z $driver ]]; then
    die "nvidia-smi cannot talk to the NVIDIA driver; install or reload the driver (GCE Deep Learning VMs: sudo /opt/deeplearning/install-driver.sh), or pass --gpus none"
  fi
  image_exists "$image" || return 0
  need=$(docker image inspect --format "{{index .Config.Labels \"$DRIVER_LABEL\"}}" "$image" 2>/dev/null || true)
  if [[ -z $need || $need == '<no value>' ]]; then
    need=$(docker image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" 2>/dev/null |
      sed -n 's/^MIN_NVIDIA_DRIVER=//p' | head -n1)
  fi
  [[ -n $need ]] || return 0
  if version_lt "$driver" "$need"; then
    die "NVIDIA driver $driver is older than the $need that $image needs (CUDA $(docker image inspect --format '{{index .Config.Labels "ai.gpu-transformers.cuda-runtime"}}' "$image" 2>/dev/null || echo 12)); upgrade the host driver (GCE: a newer Deep Learning VM image), or pass --gpus none"
  fi
}

resolve_gpus() {
  gpus=$opt_gpus
  if [[ -z $gpus ]]; then
    if ! nvidia_runtime_present; then
      warn "no NVIDIA container runtime in this Docker engine: running on CPU (install nvidia-container-toolkit to use GPUs)"
      gpus=none
    elif ! nvidia-smi -L >/dev/null 2>&1; then
      warn "the NVIDIA container runtime is present but nvidia-smi finds no GPU: running on CPU"
      gpus=none
    else
      gpus=all
    fi
  fi
  [[ $gpus == none ]] && return 0
  check_driver
  nvidia_runtime_present || die "$(gpu_runtime_missing)"
}

gpu_runtime_missing() {
  printf '%s' "--gpus $gpus needs the NVIDIA container toolkit, which this Docker engine lacks (could not select device driver \"\" with capabilities: [[gpu]]); install it and run 'sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker', or pass --gpus none"
}

# ---------------------------------------------------------- the command

resolve_name() {
  if [[ -n $opt_name ]]; then
    name=$opt_name
  else
    local stem=${script_path##*/}
    stem=${stem%.py}
    name=hfgpu-${stem//[^a-zA-Z0-9_.-]/-}
  fi
  log_file=$volume/logs/$name-$(date +%Y%m%d-%H%M%S).log
}

# The variables that carry secrets, and whether any is set.
collect_secret_names() {
  local -a all=("${DEFAULT_SECRET_NAMES[@]}" "${secret_names[@]}")
  secret_names=()
  local n
  for n in "${all[@]}"; do
    [[ -n ${!n:-} ]] && secret_names+=("$n")
  done
  return 0
}

# write_secrets: the private file the entrypoint exports (mode 600, tmpfs).
write_secrets() {
  ((${#secret_names[@]})) || [[ -n $opt_env_file ]] || return 0
  local base
  for base in "${XDG_RUNTIME_DIR:-}" /dev/shm "${TMPDIR:-/tmp}"; do
    [[ -n $base && -d $base && -w $base ]] && break
  done
  if [[ $DRY_RUN == 1 ]]; then
    secrets_dir="$base/hfgpu-secrets.XXXXXX"
    return 0
  fi
  secrets_dir=$(umask 077 && mktemp -d "$base/hfgpu-secrets.XXXXXX") || die "cannot create a private folder in $base for the secrets; set TMPDIR to a writable folder"
  owns_secrets=1
  local file=$secrets_dir/env n line
  (
    umask 077
    : >"$file"
    for n in "${secret_names[@]}"; do
      [[ ${!n} != *$'\n'* ]] || die "$n contains a newline; secrets must be one line"
      printf '%s=%s\n' "$n" "${!n}" >>"$file"
    done
    if [[ -n $opt_env_file ]]; then
      while IFS= read -r line || [[ -n $line ]]; do
        line=${line%$'\r'}
        if [[ $line =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
          printf '%s=%s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" >>"$file"
        elif [[ $line =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*$ && -n ${!BASH_REMATCH[1]:-} ]]; then
          printf '%s=%s\n' "${BASH_REMATCH[1]}" "${!BASH_REMATCH[1]}" >>"$file"
        fi
      done <"$opt_env_file"
    fi
  )
}

# docker_restart_policy: the user asked Docker itself to restart the container.
docker_restart_policy() {
  local arg
  for arg in "${docker_extra[@]}"; do
    [[ $arg == --restart || $arg == --restart=* ]] && return 0
  done
  return 1
}

# check_restart_policy: Docker's restart policy runs the container without us.
check_restart_policy() {
  docker_restart_policy || return 0
  ((opt_detach)) || die "a Docker restart policy (--docker-arg=--restart=...) needs --detach"
  ((!opt_restart)) || die "use --restart-on-preemption or a Docker restart policy, not both"
  ((${#secret_names[@]} == 0)) && [[ -z $opt_env_file ]] ||
    die "secrets cannot outlive a reboot under a Docker restart policy; use deploy/gpu-training.service with --restart-on-preemption instead"
}

# shellcheck disable=SC2329 # run by trap
cleanup() {
  if ((owns_secrets)) && [[ -n $secrets_dir ]]; then
    rm -rf -- "$secrets_dir"
  fi
  return 0
}

build_run_cmd() {
  run_cmd=(docker run --detach --name "$name"
    --label "$OWNER_LABEL=$PROG"
    --user "$(id -u):$(id -g)"
    --ipc host
    --ulimit stack=67108864
    --stop-timeout "$opt_stop_timeout"
    --volume "$volume:/volume")
  # Unlimited locked memory, as NVIDIA recommends for NCCL; an engine without
  # CAP_SYS_RESOURCE (some sandboxes, rootless Docker) cannot grant it.
  ((memlock)) && run_cmd+=(--ulimit memlock=-1)
  [[ $gpus == none ]] || run_cmd+=(--gpus "$(docker_gpus_value)")
  local network=$opt_network
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
  if [[ -n $secrets_dir ]]; then
    run_cmd+=(--mount "type=bind,source=$secrets_dir,target=$SECRETS_MOUNT,readonly"
      --env "HFGPU_SECRETS_FILE=$SECRETS_MOUNT/env")
  fi
  run_cmd+=("${docker_extra[@]}" "$image" train "$script_path" "${script_args[@]}")
}

docker_gpus_value() {
  case $gpus in
    device=*) printf '"%s"' "$gpus" ;;
    *) printf '%s' "$gpus" ;;
  esac
}

# ------------------------------------------------------------ running it

# note MESSAGE: a progress line on stderr and in the run's log file.
note() {
  log "$@"
  # Detached, stderr is the log file already.
  ((opt_detach)) || printf '%s: %s\n' "$PROG" "$*" >>"$log_file" 2>/dev/null || true
}

# clear_stale_container: a stopped container of ours with this name is removed;
# a running one, or someone else's, stops the launch.
clear_stale_container() {
  local state owner
  state=$(docker inspect --format '{{.State.Status}}' "$name" 2>/dev/null) || return 0
  owner=$(docker inspect --format "{{index .Config.Labels \"$OWNER_LABEL\"}}" "$name" 2>/dev/null || true)
  if [[ $state == running || $state == restarting ]]; then
    die "a container named $name is already running; follow it (docker logs -f $name), stop it (docker stop $name) or pass --name NEW"
  fi
  [[ $owner == "$PROG" ]] || die "a container named $name already exists; remove it (docker rm $name) or pass --name NEW"
  docker rm "$name" >/dev/null
}

# start_container: docker run --detach; a failure leaves nothing behind.
start_container() {
  local err
  if ! err=$("${run_cmd[@]}" 2>&1 >/dev/null); then
    docker rm --force "$name" >/dev/null 2>&1 || true
    if ((memlock)) && [[ $err == *"error setting rlimit"* ]]; then
      warn "this Docker engine cannot raise the locked-memory limit (memlock=-1); running with its default (multi-node NCCL over RDMA may be slower)"
      memlock=0
      build_run_cmd
      start_container
      return 0
    fi
    if [[ $err == *"could not select device driver"* ]]; then
      die "$(gpu_runtime_missing)"
    fi
    die "docker could not start the container: ${err%%$'\n'*}"
  fi
}

# shellcheck disable=SC2329 # run by trap
on_stop_signal() {
  stopping=1
  log "stopping $name: the program saves a checkpoint first (up to ${opt_stop_timeout}s)"
  docker stop --time "$opt_stop_timeout" "$name" >/dev/null 2>&1 || true
}

# follow_logs: the container's output into the log file (and to stdout in the foreground).
follow_logs() {
  if ((opt_detach)); then
    docker logs --follow "$name" >>"$log_file" 2>&1 || true
  else
    docker logs --follow "$name" 2>&1 | tee -a "$log_file" || true
  fi
}

# container_exit_code: wait for the container, tolerating a daemon restart.
container_exit_code() {
  local tries=0 code
  until code=$(docker wait "$name" 2>/dev/null); do
    # Removed by someone else (the daemon answers, the container is gone): no status.
    if docker version >/dev/null 2>&1 && ! docker container inspect "$name" >/dev/null 2>&1; then
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
    oom=$(docker inspect --format '{{.State.OOMKilled}}' "$name" 2>/dev/null || echo false)
    docker rm --force "$name" >/dev/null 2>&1 || true
    [[ $oom == true ]] && note "$name ran out of memory (OOM-killed); use a smaller batch size or a larger machine"
    if ((opt_restart && !stopping)) && [[ $oom != true ]] &&
      [[ $code == "$PREEMPTED_EXIT" || $code == 137 || $code == 143 ]]; then
      if ((restarts < opt_max_restarts)); then
        restarts=$((restarts + 1))
        note "$name exited $code (preempted or killed); starting it again to resume ($restarts/$opt_max_restarts)"
        start_container
        continue
      fi
      note "$name exited $code; --max-restarts $opt_max_restarts reached, giving up"
    fi
    break
  done
  case $code in
    0) note "$name finished; outputs in $volume, log in $log_file" ;;
    "$PREEMPTED_EXIT") note "$name stopped after saving a checkpoint (exit 75); run the same command again to resume" ;;
    *) note "$name failed with exit code $code; see $log_file" ;;
  esac
  return "$code"
}

main() {
  parse_args "$@"
  config_init
  check_docker
  resolve_volume
  resolve_image
  resolve_script
  resolve_gpus
  resolve_name
  collect_secret_names
  check_restart_policy
  trap cleanup EXIT
  write_secrets
  build_run_cmd
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "${run_cmd[@]}"
    return 0
  fi
  clear_stale_container
  mkdir -p -- "$volume/logs"
  log "running: $(quote_cmd "${run_cmd[@]}")"
  log "log file: $log_file"
  ((opt_detach)) || trap on_stop_signal INT TERM
  start_container
  if docker_restart_policy; then
    # Docker reruns the container itself: keep it; copy its output until its first exit.
    (docker logs --follow "$name" >>"$log_file" 2>&1 || true) </dev/null &
    log "started $name under Docker's restart policy; follow: docker logs -f $name; stop: docker stop $name && docker rm $name"
    return 0
  fi
  if ((opt_detach)); then
    (
      trap '' HUP INT
      trap cleanup EXIT
      supervise
    ) </dev/null >>"$log_file" 2>&1 &
    owns_secrets=0
    log "started $name in the background (supervisor pid $!)"
    log "follow: tail -f $log_file   (or: docker logs -f $name)"
    log "stop:   kill $! (saves a checkpoint; with --restart-on-preemption, docker stop $name would restart it)"
    return 0
  fi
  local code=0
  supervise || code=$?
  return "$code"
}

# `exit` on the same line: bash reads a script as it runs, so a file edited (or
# updated by git pull) during a long run must not be read again after main returns.
main "$@"; exit
