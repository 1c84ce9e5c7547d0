# shellcheck shell=bash
# shellcheck disable=SC2034 # the guarantees below are read by launch_training.sh
# Summary: launch_training.sh's options, declared once (lib/options.sh reads, checks and lists them),
# and the guarantees of the launcher's `docker run` that no --docker-arg may override.

# -- what every container of the launcher has (launch_training.sh build_run_cmd) ------------------
readonly OWNER_LABEL=hfgpu.owner          # whose container it is: the launcher removes only its own
readonly SECRETS_MOUNT=/run/hfgpu-secrets # the private secrets file, mounted read-only
readonly CA_MOUNT=/run/hfgpu-ca-bundle.pem
readonly VOLUME_MOUNT=/volume
# The variables the launcher gives the image's entrypoint, each with the option that sets it.
declare -grA LAUNCH_ENV_OPTION=(
  [NPROC_PER_NODE]=--nproc [NNODES]=--nnodes [NODE_RANK]=--node-rank [MASTER_ADDR]=--master-addr
  [MASTER_PORT]=--master-port [RDZV_ENDPOINT]=--rdzv-endpoint [CHECKPOINT_BUCKET]=--checkpoint-bucket
  [HFGPU_TRAINER_BUCKET]=--checkpoint-bucket [HFGPU_CA_BUNDLE]=--ca-bundle [HFGPU_UMASK]=--share
  [HFGPU_SECRETS_FILE]='--secret NAME or --env-file FILE'
)
# The `docker run` options the launcher sets itself, each with what to use instead.
declare -grA LAUNCH_DOCKER_OPTION=(
  [--name]='--container-name NAME'
  [--user]='nothing: the container runs as you (uid:gid), so that the files in the volume are yours; drop it'
  [--detach]='--detach'
  [--gpus]='--gpus all|N|none|device=I,J'
  [--network]='--network NET' [--net]='--network NET'
  [--restart]='--restart-on-preemption (and deploy/gpu-training.service to start again after a reboot)'
  [--stop-timeout]='--stop-timeout S'
  [--env-file]="the launcher's --env-file FILE (private, like secrets)"
  [--label-file]="--docker-arg=--label=KEY=VALUE, one label each (hfgpu.* labels are the launcher's)"
  [--entrypoint]="a script as SCRIPT (the image's entrypoint applies --share's umask and reads the secrets)"
  [--rm]='nothing: the launcher removes the container once it has read its exit status; drop it'
  [--ipc]='nothing: the launcher gives --ipc host (torch workers and NCCL share memory through it); drop it'
)
# One-letter `docker run` options: the long option each stands for.
declare -grA LAUNCH_DOCKER_SHORT=([u]=--user [d]=--detach [l]=--label [e]=--env [v]=--volume)
# Secrets that are read from the caller's environment (launch_training.sh --help).
readonly -a DEFAULT_SECRET_NAMES=(HF_TOKEN HUGGING_FACE_HUB_TOKEN WANDB_API_KEY COMET_API_KEY
  NEPTUNE_API_TOKEN MLFLOW_TRACKING_TOKEN MLFLOW_TRACKING_PASSWORD)

# looks_secret NAME: a name that should go through --secret, not --env.
looks_secret() {
  [[ " ${DEFAULT_SECRET_NAMES[*]} " == *" $1 "* ]] && return 0
  [[ $1 =~ (TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY)$ ]]
}

# -- the launcher's own types ------------------------------------------------------------------------

_launch_gpus() {
  local n
  case $1 in
    all | none) ;;
    device=*)
      [[ $1 =~ ^device=[A-Za-z0-9-]+(,[A-Za-z0-9-]+)*$ ]] ||
        die "$2 $(q "$1") is not a GPU list; give device= with GPU indexes or UUIDs separated by commas (device=0,1)"
      ;;
    *) to_int n "$2 (all, none, a count or device=I,J)" "$1" 1 1024 ;;
  esac
}
_launch_nproc() {
  local n
  [[ $1 == auto ]] || to_int n "$2 (auto or a count)" "$1" 1 1024
}
_launch_host() {
  [[ $1 =~ ^[A-Za-z0-9]([A-Za-z0-9._:-]*[A-Za-z0-9])?$ ]] ||
    die "$2 $(q "$1") is not a host; give a host name or IP address (e.g. 10.0.0.2)"
}
_launch_host_port() {
  local port
  [[ $1 =~ ^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?:([0-9]+)$ ]] ||
    die "$2 $(q "$1") is not HOST:PORT; give the rendezvous host and port (e.g. 10.0.0.2:29400)"
  to_int port "$2: the port" "${BASH_REMATCH[2]}" 1 65535
}
_launch_docker_name() {
  [[ $1 =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$ ]] ||
    die "$2 $(q "$1") is not a valid container name; use letters, digits, '_', '.', '-' (at most 128)"
}
_launch_network() {
  [[ $1 =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}(:[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127})?$ ]] ||
    die "$2 $(q "$1") is not a Docker network; give a name from docker network ls (bridge, host, none, ...)"
}
_launch_env_name() {
  [[ $1 =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "$2 $(q "$1") is not a variable name; give letters, digits and '_', not starting with a digit (e.g. MY_TOKEN)"
}
# --env NAME[=VALUE]: a plain variable; a secret, a launcher's variable or an unset NAME is refused.
_launch_env_spec() {
  local n=${1%%=*}
  # The name only: the value may be a token (a typo in the name must not print it).
  [[ $n =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] ||
    die "$2: the name $(q "$n") is not a variable name (the value is not shown: it may be a secret);" \
      "give NAME or NAME=VALUE, NAME of letters, digits and '_', not starting with a digit"
  if looks_secret "$n"; then
    die "$2 $n looks like a secret, and --env values show in docker inspect; pass it with --secret $n" \
      "(it is read from your environment)"
  fi
  [[ -z ${LAUNCH_ENV_OPTION[$n]:-} ]] ||
    die "$2 $(q "$1") would override $n, which the launcher sets; use ${LAUNCH_ENV_OPTION[$n]} instead"
  [[ $1 != "$n" ]] && return 0
  [[ -n ${!n+set} ]] || die "$2 $n: $n is not set in your environment; give $2 $n=VALUE, or export $n first"
  [[ ${!n} != *[$'\n\r']* ]] || die "$2 $n: the value of $n in your environment has a newline; give one line"
}
_launch_docker_arg() { launch_docker_arg_check "$2" "$1"; }

# launch_mount_target PATH: PATH inside the container, normalized (// and /./ and a trailing /).
launch_mount_target() { realpath -ms -- "/$1"; }

# launch_refuse ORIGIN ARG WHAT INSTEAD: the one line for a --docker-arg that overrides a guarantee.
launch_refuse() {
  [[ $4 != nothing:* ]] || die "$1 $(q "$2") would set $3, which the launcher sets itself:${4#nothing:}"
  die "$1 $(q "$2") would set $3, which the launcher sets itself; use $4 instead"
}

# launch_docker_arg_check ORIGIN ARG [NEXT]: ARG is an extra `docker run` argument that keeps the
# launcher's guarantees (above); NEXT is the argument after it, when ARG's value is there.
launch_docker_arg_check() {
  local origin=$1 arg=$2 opt='' value='' has=0 i c target name
  case $2 in
    --*=*) opt=${2%%=*} value=${2#*=} has=1 ;;
    --?*) opt=$2 ;;
    -[a-zA-Z]*)
      # A cluster of one-letter options (-it, -dit, -uroot): the first that takes a value ends it.
      for ((i = 1; i < ${#2}; i++)); do
        c=${2:i:1}
        [[ -n ${LAUNCH_DOCKER_SHORT[$c]:-} ]] || continue
        opt=${LAUNCH_DOCKER_SHORT[$c]}
        [[ $c == d ]] && break
        if ((i + 1 < ${#2})); then
          value=${2:i+1} has=1
          value=${value#=}
        fi
        break
      done
      [[ -n $opt ]] || return 0
      ;;
    *) return 0 ;;
  esac
  [[ -z ${LAUNCH_DOCKER_OPTION[$opt]:-} ]] ||
    launch_refuse "$origin" "$arg" "docker's $opt" "${LAUNCH_DOCKER_OPTION[$opt]}"
  # `--label K=V` as two --docker-arg: the value is the next one.
  if ((!has && $# >= 3)); then
    value=$3 has=1 arg="$2 $3"
  fi
  ((has)) || return 0
  case $opt in
    --label)
      [[ ${value%%=*} != hfgpu.* ]] || launch_refuse "$origin" "$arg" "the label ${value%%=*}" \
        "nothing: hfgpu.* labels are the launcher's ($OWNER_LABEL names whose container it is); drop it"
      ;;
    --env)
      name=${value%%=*}
      [[ -z ${LAUNCH_ENV_OPTION[$name]:-} ]] || launch_refuse "$origin" "$arg" "$name" "${LAUNCH_ENV_OPTION[$name]}"
      looks_secret "$name" && die "$origin $(q "$arg"): $name looks like a secret, and docker arguments" \
        "show in docker inspect; pass it with --secret $name (it is read from your environment)"
      ;;
    --ulimit)
      name=${value%%=*}
      [[ $name != memlock && $name != stack ]] || launch_refuse "$origin" "$arg" "the $name limit" \
        "nothing: the launcher sets it (memlock unlimited where the engine allows it); drop it"
      ;;
    --mount)
      local -a fields
      local field
      IFS=, read -ra fields <<<"$value"
      for field in "${fields[@]}"; do
        field=${field#\"}
        case ${field%%=*} in
          target | dst | destination) target=${field#*=} ;;
        esac
      done
      ;;
    --volume)
      local -a parts
      IFS=: read -ra parts <<<"$value"
      target=${parts[1]:-${parts[0]:-}}
      ;;
    --tmpfs) target=${value%%:*} ;;
  esac
  [[ -n ${target:-} ]] || return 0
  target=$(launch_mount_target "${target%\"}")
  case $target in
    "$VOLUME_MOUNT") launch_refuse "$origin" "$arg" "the mount at $VOLUME_MOUNT" '--volume DIR' ;;
    "$SECRETS_MOUNT" | "$SECRETS_MOUNT"/*)
      launch_refuse "$origin" "$arg" "the secrets mount $SECRETS_MOUNT" '--secret NAME or --env-file FILE'
      ;;
    "$CA_MOUNT") launch_refuse "$origin" "$arg" "the CA bundle mount $CA_MOUNT" '--ca-bundle FILE' ;;
  esac
  return 0
}

# launch_docker_args_check ARGS...: every --docker-arg, each with the one after it (--label K=V
# given as two --docker-arg).
launch_docker_args_check() {
  local i
  for ((i = 1; i < $#; i++)); do
    launch_docker_arg_check --docker-arg "${!i}" "${@:i+1:1}"
  done
}

# shellcheck disable=SC2016 # a literal substitution the launcher must never run
opt_type gpus _launch_gpus all 'many' '0' '1025' 'device=' 'device=0,,1' '-1' "$OPT_SUBST"
opt_type nproc _launch_nproc auto '0' 'auto2' '1025' '-1' "$OPT_SUBST"
opt_type host _launch_host 10.0.0.2 'a b' '-x' 'a/b' 'host.' "$OPT_SUBST"
opt_type host-port _launch_host_port 10.0.0.2:29400 'hostonly' 'h:0' 'h:70000' ':29400' '-x:1' "$OPT_SUBST:1"
opt_type docker-name _launch_docker_name my-run 'bad!name' '-x' 'a b' "$OPT_SUBST"
opt_type network _launch_network bridge 'a b' '-x' 'a/b' "$OPT_SUBST"
opt_type env-name _launch_env_name MY_TOKEN '1X' 'a-b' '-x' 'A B' "$OPT_SUBST"
opt_type env-spec _launch_env_spec RUN_MODE=fast '1BAD=x' '=x' 'A B=1' 'HF_TOKEN=x' 'MY_API_KEY=x' \
  'NPROC_PER_NODE=4' 'HFGPU_SECRETS_FILE=/x' 'HFGPU_SWEEP_SURELY_UNSET' "$OPT_SUBST=1"
opt_type docker-arg _launch_docker_arg --shm-size=1g '--name=x' '--label=hfgpu.owner=x' '-lhfgpu.owner=x' \
  '--user=0' '-u0' '--user' '--mount=type=bind,source=/tmp,target=/volume' '--volume=/tmp:/volume/' \
  '-v/tmp://run/hfgpu-secrets' '--mount=type=bind,src=/etc/hostname,dst=/run/hfgpu-ca-bundle.pem' \
  '--tmpfs=/volume' '--env=NPROC_PER_NODE=4' '-eHFGPU_UMASK=000' '--env=HF_TOKEN=x' '--restart=always' \
  '--gpus=all' '--network=host' '--detach' '-dit' '--rm' '--entrypoint=sh' '--env-file=/etc/hostname' \
  '--ulimit=memlock=1024' '--ipc=private' '--label-file=/etc/hostname'

# -- the table -------------------------------------------------------------------------------------
opt --image type=image-ref env=CONTAINER_NAME meta=REF example=hfgpu-test-base:bookworm \
  help="image to run (default: the Artifact Registry image when PROJECT|is known, else the local IMAGE_NAME:TAG). A registry reference is|pulled when absent; the project's own local name IMAGE_NAME:TAG is|built (build_and_push.sh --no-push); any other absent local name|is refused (build it, or add --build)"
opt --build type=switch var=opt_build help='build the local image (IMAGE_NAME:TAG, or --image NAME:TAG) first'
opt --volume type=dir env=VOLUME meta=DIR help='host folder mounted at /volume (default ./volume)'
opt --gpus type=gpus var=opt_gpus meta='all|N|none|device=I,J' \
  help='GPUs to give the container (default: all when the NVIDIA|container runtime is present, else a warning and CPU)'
opt --nproc type=nproc var=opt_nproc meta='N|auto' help='processes on this node (default auto: one per visible GPU)'
opt --nnodes type=int:1:4096 var=opt_nnodes meta=N \
  help='nodes in the job (default 1); more than 1 needs --node-rank and|--master-addr, or --rdzv-endpoint'
opt --node-rank type=int:0:4095 var=opt_node_rank meta=R needs=--nnodes conflicts=--rdzv-endpoint \
  needs-why="a rank is this node's place among the --nnodes N nodes (0..N-1), and without --nnodes the job has one node; give --nnodes N too, the same on every node" \
  conflicts-why="a c10d rendezvous (--rdzv-endpoint) assigns each node its rank itself; drop --node-rank, or give --master-addr with --node-rank instead of --rdzv-endpoint" \
  help="this node's rank, 0..N-1 (with --master-addr; a rendezvous assigns ranks itself)"
opt --master-addr type=host var=opt_master_addr meta=HOST conflicts=--rdzv-endpoint \
  conflicts-why="the nodes meet either at the rank-0 node's address or at a c10d rendezvous endpoint, not both; keep --rdzv-endpoint HOST:PORT alone, or --master-addr with --node-rank on every node" \
  help="the rank-0 node's address"
opt --master-port type=int:1:65535 var=opt_master_port meta=P conflicts=--rdzv-endpoint \
  conflicts-why="--master-port is the rank-0 node's port, and a c10d rendezvous meets at its own HOST:PORT instead; drop --master-port, or give --master-addr, --master-port and --node-rank instead of --rdzv-endpoint" \
  help="the rank-0 node's port (default 29500)"
opt --rdzv-endpoint type=host-port var=opt_rdzv meta=HOST:PORT \
  help='a c10d rendezvous instead of --master-addr/--master-port'
opt --network type=network var=opt_network meta=NET \
  help="docker network (default: docker's bridge; host when --nnodes > 1)"
opt --container-name type=docker-name var=opt_name meta=NAME old=--name \
  help='container name (default: hfgpu-<user>-<script name>)'
opt --detach type=switch var=opt_detach help='return once started; logs still go to VOLUME/logs/'
opt --restart-on-preemption type=switch var=opt_restart \
  help='run again when the program exits 75 ("preempted, checkpoint|saved") or is stopped or killed (143/137), saying whether it|resumes: our programs do; an HF Trainer script is given|--resume_from_checkpoint with its newest complete checkpoint|when it uses that flag; any other starts over at step 0'
opt --max-restarts type=int:0:1000 var=opt_max_restarts meta=N help='bound for --restart-on-preemption (default 10)'
opt --checkpoint-bucket type=gs-url env=CHECKPOINT_BUCKET meta=gs://BUCKET/PATH bad='gs://my-google-runs/p' \
  help='where checkpoints outlive the VM: our programs, and any script|that trains a transformers Trainer (the image hooks it); refused|for a script that does not (it would upload nothing)'
opt --ca-bundle type=pem-file env=CA_BUNDLE meta=FILE \
  help='extra CA bundle (PEM) for a TLS-intercepting proxy: local builds|use it, and runtime installs (HFGPU_PIP_REQUIREMENTS) trust it'
opt --env type=env-spec var=env_specs repeat=1 meta='NAME[=VALUE]' \
  help='a plain variable for the program (repeatable; NAME alone takes|yours); secrets go through --secret instead'
opt --env-file type=file var=opt_env_file meta=FILE help='NAME=VALUE lines for the program, passed privately like secrets'
opt --secret type=env-name var=extra_secret_names repeat=1 meta=NAME \
  help='one more environment variable to pass as a secret (repeatable)'
opt --share type=switch var=opt_share \
  help='outputs and logs readable by group and others (umask 022);|the default is private to you (umask 077)'
opt --stop-timeout type=int:1:3600 var=opt_stop_timeout meta=S \
  help="seconds \`docker stop\` waits for the checkpoint (default 120)"
opt --docker-arg type=docker-arg var=docker_extra repeat=1 meta=ARG \
  help="one extra \`docker run\` argument, as is (repeatable); one that would|override what the launcher sets (name, user, owner label, the volume|and secrets mounts, GPUs, network...) is refused with the option to use"
opt --allow-outside-volume type=switch var=opt_outside_volume \
  help='only warn when a script argument puts outputs outside /volume|(--output_dir /tmp/out: lost with the container); default: refuse'
opt --dry-run type=switch var=DRY_RUN help='print the commands, run nothing'
