# shellcheck shell=bash
# Summary: submit_vertex_job.sh's options, declared once (lib/options.sh reads, checks and lists
# them), and the types only this script has. Source after lib/options.sh and lib/machines.sh.

# Vertex AI's limits and names, as its REST reference gives them:
# CustomJob.displayName "can be up to 128 characters long" (v1/projects.locations.customJobs).
readonly VERTEX_DISPLAY_NAME_MAX=128
# Variables Vertex AI sets in every replica (CLUSTER_SPEC, AIP_*: training/code-requirements) or
# this script sets (HFGPU_SECRETS): --env may not set them.
readonly VERTEX_RESERVED_ENV='^(CLUSTER_SPEC|HFGPU_SECRETS|AIP_.*)$'
# Variables that carry secrets: refused by --env (use --secret). The launcher's list, plus
# anything named like a credential (is_secret_name).
readonly SECRET_NAMES=(HF_TOKEN HUGGING_FACE_HUB_TOKEN WANDB_API_KEY COMET_API_KEY
  NEPTUNE_API_TOKEN MLFLOW_TRACKING_TOKEN MLFLOW_TRACKING_PASSWORD)

# is_secret_name NAME: NAME is one of the launcher's secret variables, or has a credential word
# (TOKEN, PASSWORD, PASSWD, SECRET, API_KEY, ACCESS_KEY) between underscores, e.g. HF_TOKEN;
# TOKENIZERS_PARALLELISM is not one.
is_secret_name() {
  local upper=${1^^}
  [[ " ${SECRET_NAMES[*]} " == *" $1 "* ]] ||
    [[ $upper =~ (^|_)(TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|ACCESS_KEY)(_|$) ]]
}

# Vertex AI runs a job in one region (vertex-ai/docs/general/locations); the multi-regions
# LOCATION may name for Artifact Registry (us, europe, asia) are not among them.
_opt_vertex_region() {
  validate_location "$1" "$2"
  [[ $1 =~ ^[a-z]+-[a-z]+[0-9]+$ ]] ||
    die "invalid location $(q "$1")$(_from "$2"): Vertex AI runs a job in a region, not a multi-region;" \
      "use a region like us-east4"
}

# [type=]TYPE,count=N, TYPE in Vertex AI's spelling or Compute Engine's (GPU_FACTS knows both).
_opt_accelerator() {
  # shellcheck disable=SC2034 # to_int's target: the count is only checked here
  local type count
  [[ $1 =~ ^(type=)?([A-Za-z0-9_-]+),count=([^,]*)$ ]] ||
    die "$2 must be TYPE,count=N (e.g. NVIDIA_H100_80GB,count=8 or nvidia-l4,count=1); got $(q "$1")"
  type=${BASH_REMATCH[2]}
  to_int count "$2 count" "${BASH_REMATCH[3]}" 1 16
  gpu_facts "$type" ||
    die "$2 type $(q "$type") is not a Vertex AI GPU;" \
      "use one of $(gpu_names 2) (or its Compute Engine name, e.g. nvidia-h100-80gb)"
}

# Flex-start's longest wait: 30m, 4h, 1d, 3600s or 3600 (seconds); 0 is no limit.
_opt_wait() {
  [[ $1 =~ ^[0-9]{1,9}[smhd]?$ ]] ||
    die "$2 must be a duration like 30m, 4h, 1d or 3600s (0: no limit); got $(q "$1")"
}

_opt_display_name() {
  ((${#1} <= VERTEX_DISPLAY_NAME_MAX)) ||
    die "$2 is ${#1} characters long; Vertex AI takes at most $VERTEX_DISPLAY_NAME_MAX; give a shorter name"
}

# NAME=VALUE: a plain variable, never a secret nor one Vertex AI sets.
_opt_env_pair() {
  local name=${1%%=*}
  [[ $1 == *=* ]] || die "$2 must be NAME=VALUE; got no '=' (what was given is not shown: it may be a secret)"
  [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] ||
    die "$2 must be NAME=VALUE, NAME a variable name (letters, digits, _); got the name $(q "$name")" \
      "(the value is not shown: it may be a secret)"
  ! is_secret_name "$name" ||
    die "$2 $name=... would store a secret in the job's specification, readable by every Vertex viewer;" \
      "use --secret $name=SECRET (Secret Manager)"
  [[ ! $name =~ $VERTEX_RESERVED_ENV ]] || die "$2 $name is set by Vertex AI or by this script; leave it out"
}

# NAME=SECRET, SECRET projects/P/secrets/S/versions/V or S[:VERSION] (in the job's project).
_opt_secret_pair() {
  local name=${1%%=*} ref=${1#*=}
  [[ $1 == *=* && $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ && -n $ref ]] ||
    die "$2 must be NAME=SECRET (SECRET: projects/P/secrets/S/versions/V, or S[:VERSION]); got $(q "$1")"
  [[ $ref =~ ^projects/[a-z0-9-]+/secrets/[A-Za-z0-9_-]{1,255}/versions/([0-9]+|latest)$ ||
    $ref =~ ^[A-Za-z0-9_-]{1,255}(:([0-9]+|latest))?$ ]] ||
    die "$2 $name: $(q "$ref") must be projects/P/secrets/S/versions/V (V a number or latest) or S[:VERSION]"
}

# Each type's own traps, which the sweep tries on every option of the type (a region's, and more).
IFS='|' read -ra _vertex_region_traps <<<"${OPT_TYPE_BAD[region]}"
opt_type vertex-region _opt_vertex_region us-east4 "${_vertex_region_traps[@]}" us europe
opt_type machine-type machine_check_name a3-highgpu-1g a3-highgpu-3g g2-standard-7 a9-highgpu-1g \
  A3-HIGHGPU-1G 'a3 highgpu' a3- "$OPT_SUBST" -x
opt_type accelerator _opt_accelerator NVIDIA_L4,count=1 NVIDIA_L4 NVIDIA_L4,count=0 NVIDIA_L4,count=17 \
  NVIDIA_L4,count=two nvidia-k9000,count=1 count=1 "NVIDIA_L4,count=1,type=x" "$OPT_SUBST"
opt_type wait _opt_wait 4h soon 1.5h -1 2w 1h30m 4H "$OPT_SUBST"
opt_type display-name _opt_display_name bert-run "$(printf 'x%.0s' {1..129})"
opt_type env-pair _opt_env_pair RUN_NOTE=plain RUN_NOTE 1X=2 =x 'A B=1' HF_TOKEN=x MY_DB_PASSWORD=x \
  AIP_MODEL_DIR=/tmp CLUSTER_SPEC={} HFGPU_SECRETS=x "$OPT_SUBST"
opt_type secret-pair _opt_secret_pair HF_TOKEN=hf-token HF_TOKEN HF_TOKEN= =hf-token HF_TOKEN=hf:v1 \
  HF_TOKEN=projects/p/secrets/s/versions/v 'HF_TOKEN=a b' "HF_TOKEN=$OPT_SUBST"

opt --location type=vertex-region env=LOCATION meta=REGION conflicts=--region \
  conflicts-why="--region is --location under gcloud's name (both set LOCATION); give it once" \
  help="Vertex AI region, e.g. europe-west4 (default us-east4); --region is|the same option, gcloud's word"
opt --region type=vertex-region env=LOCATION meta=REGION help='the same as --location'
opt --project type=project env=PROJECT meta=ID help="Google Cloud project (default: gcloud's core/project)"
opt --image type=image-ref env=CONTAINER_NAME meta=REF \
  bad='us-east4-docker.pkg.dev/p/r/i@sha256:abc|eu.gcr.io/p/i:1@sha256:|gpu_transformers:0.1.0' \
  help='image to run (default: the one build_and_push.sh pushed,|LOCATION-docker.pkg.dev/PROJECT/REPO_NAME/IMAGE_NAME:TAG)'
opt --machine-type type=machine-type var=opt_machine meta=TYPE help='machine of every node (default a3-highgpu-1g)'
opt --accelerator type=accelerator var=opt_accelerator meta=TYPE,count=N \
  help="GPUs of every node, by Vertex's name (NVIDIA_H100_80GB) or Compute|Engine's (nvidia-h100-80gb); default: the machine type's own GPUs|(a3-*, a2-*, a4-*, g2-*: lib/machines.sh), none for other machine types"
opt --nodes type=int:1:1000 var=opt_nodes meta=N help='machines (default 1): pool 0 holds the chief, pool 1 the other N-1'
opt --spot type=switch var=opt_spot conflicts=--flex-start \
  conflicts-why='a job has one scheduling strategy (Vertex AI scheduling.strategy: SPOT or FLEX_START); keep one (with neither: on demand)' \
  help='Spot capacity: cheaper, can be preempted'
opt --flex-start type=switch var=opt_flex \
  help='Flex-start (Dynamic Workload Scheduler): waits for capacity; L4, A100,|H100, H200 and B200 GPUs only'
opt --max-wait type=wait var=opt_max_wait meta=DURATION needs=--flex-start \
  needs-why="it is Flex-start's longest wait for capacity (scheduling.maxWaitDuration, sent only with FLEX_START); add --flex-start, or drop --max-wait" \
  help="with --flex-start: longest wait for capacity (30m, 4h, 1d, 3600s;|0 = no limit; Vertex's default 24h)"
opt --output type=gs-url var=opt_output meta=gs://BUCKET/PATH \
  help="the job's base output directory: checkpoints, model, TensorBoard logs"
opt --service-account type=email var=opt_sa meta=EMAIL help='the identity the job runs as (see docs/vertex.md for its roles)'
opt --display-name type=display-name var=opt_display_name meta=NAME \
  help="the job's name in the console (default hfgpu-<user>-<script stem>)"
opt --env type=env-pair var=env_pairs repeat=1 meta=NAME=VALUE \
  help="a plain variable for the program (repeatable); stored in the job's|specification, so never a secret"
opt --secret type=secret-pair var=secret_pairs repeat=1 meta=NAME=SECRET \
  help='a Secret Manager secret as variable NAME (repeatable); SECRET is|projects/P/secrets/S/versions/V, or S[:VERSION] in PROJECT (latest)'
opt --follow type=switch var=opt_follow conflicts=--dry-run \
  conflicts-why='--dry-run submits no job, so there is none to follow; drop --follow, or drop --dry-run to submit the job and follow it' \
  help="stream the job's logs (to stderr) and its state changes until it|ends; exit 0 when it succeeded, 1 otherwise"
opt --dry-run type=switch var=DRY_RUN help='print the job specification and the gcloud command; submit nothing'
