# shellcheck shell=bash
# Summary: create_instance.sh's options, declared once (lib/options.sh reads, checks and lists them),
# and the types only this script has: machine type, accelerator, Flex-start duration, boot disk
# size, reservation and image family. Each type's traps (its BAD values) are tried by
# tests/test_option_sweep.py on every option of the type. Source it after lib/machines.sh.
# The old spelling the table cannot say (--image NAME without '/', which meant --image-name) and
# --grant-reader (now a no-op) are read by create_instance.sh's old_spellings before opt_parse.
# A conflict is declared on one side only, with its reason and fix (conflicts-why=): the error
# then names the pair in the table's order.
# An option's bad= values are refused only beside the others' defaults (LOCATION us-east4): a zone
# outside that region, a multi-region LOCATION without a zone.

# Google's machine facts (also when lib/options.sh prints this table for the sweep).
# shellcheck source=lib/machines.sh
[[ -n ${DLVM_FAMILY:-} ]] || source "$HFGPU_ROOT/lib/machines.sh"

# The longest Flex-start run (cloud.google.com/compute/docs/instances/about-flex-start-vms: up to
# seven days) and the shortest the script takes (a VM that boots and pulls needs minutes).
readonly FLEX_MIN_SECONDS=600 FLEX_MAX_SECONDS=$((7 * 86400))
# The smallest boot disk in GB: the Deep Learning VM image, the training image and the caches.
readonly DISK_MIN_GB=100
# Why --spot, --flex-start, --on-demand and --reservation exclude one another: each is one way to
# provision the VM (the create command's --provisioning-model SPOT, FLEX_START with reservation
# affinity none, standard, or a specific reservation); --reservation's help says the default.
readonly CI_ONE_PROVISIONING="each picks how the VM is provisioned (Spot, Flex-start, on demand or a specific\
 reservation), and a VM is provisioned one way; keep one (with none: on demand where Google offers the\
 machine type, else Spot)"

# ci_accelerator SPEC: ACC_TYPE and ACC_COUNT from TYPE[,count=N] or type=TYPE,count=N (none: no
# GPU); returns 1 with ACC_WHY set when SPEC is not one.
ci_accelerator() {
  local part parts
  ACC_TYPE='' ACC_COUNT=1 ACC_WHY=''
  [[ $1 != none ]] || return 0
  IFS=, read -ra parts <<<"$1"
  for part in "${parts[@]}"; do
    case $part in
      type=*) ACC_TYPE=${part#type=} ;;
      count=*) ACC_COUNT=${part#count=} ;;
      *=*) ACC_WHY="unknown key $(q "${part%%=*}"); use TYPE,count=N, e.g. nvidia-tesla-t4,count=1" ;;
      *) ACC_TYPE=$part ;;
    esac
  done
  [[ -n $ACC_WHY ]] && return 1
  [[ $ACC_COUNT =~ ^(1|2|4|8|16)$ ]] || ACC_WHY="the count must be 1, 2, 4, 8 or 16"
  gpu_facts "$ACC_TYPE" && [[ $ACC_TYPE == "$GF_GCE" ]] ||
    ACC_WHY="use a Compute Engine GPU name: $(gpu_names 1) (N1 takes $(n1_gpus))"
  [[ -z $ACC_WHY ]]
}
_ci_accelerator() {
  ci_accelerator "$1" || die "invalid accelerator $(q "$1")$(_from "$2"): $ACC_WHY"
}

# duration_seconds VALUE: gcloud's duration (7d, 36h, 1d12h, 90m, 600s) in seconds; 1 when not one.
duration_seconds() {
  local rest=$1 total=0 num unit
  [[ $rest =~ ^([0-9]{1,7}[dhms])+$ ]] || return 1
  while [[ $rest =~ ^([0-9]+)([dhms])(.*)$ ]]; do
    num=$((10#${BASH_REMATCH[1]})) unit=${BASH_REMATCH[2]} rest=${BASH_REMATCH[3]}
    case $unit in d) total=$((total + num * 86400)) ;; h) total=$((total + num * 3600)) ;;
      m) total=$((total + num * 60)) ;; s) total=$((total + num)) ;; esac
  done
  printf '%s\n' "$total"
}
_ci_duration() {
  local seconds
  seconds=$(duration_seconds "$1") ||
    die "invalid duration $(q "$1")$(_from "$2"): use days, hours, minutes, seconds like 7d, 36h or 1d12h"
  ((seconds >= FLEX_MIN_SECONDS && seconds <= FLEX_MAX_SECONDS)) ||
    die "duration $(q "$1")$(_from "$2") must be from 10m to 7d (Flex-start's longest run); give e.g. 36h"
}

_ci_disk_size() {
  machine_check_disk "$1" "$2" "$DISK_MIN_GB" "the Deep Learning VM image, the training image and the caches need"
}

_ci_reservation() {
  [[ $1 =~ $COMPUTE_NAME_RE ]] ||
    die "invalid reservation name $(q "$1")$(_from "$2"): use the name gcloud compute reservations list shows"
}
opt_type machine-type machine_check_name g2-standard-8 'a3-highgpu-3g' 'g4-standard-48' 'A3-HIGHGPU-1G' 'n1' \
  'g2_standard_8' "${OPT_NAME_TRAPS[@]}"
opt_type accelerator _ci_accelerator nvidia-tesla-t4,count=1 'nvidia-tesla-t4,count=3' 'nvidia-tesla-t4,count=0' \
  'nvidia-tesla-k80' 'NVIDIA_TESLA_T4' 'nvidia-tesla-t4,size=1' 'count=1' 'nvidia-tesla-t4,count=x' "$OPT_SUBST" \
  '-x'
opt_type duration _ci_duration 1d12h '9d' '5m' '7' '1w' '1d 2h' '-1d' '99999999d' "$OPT_SUBST"
opt_type disk-size _ci_disk_size 200GB 'lots' '090GB' '99TB' '50' '1.5TB' '200gb' '-200GB' '9999999999GB' \
  "$OPT_SUBST"
opt_type reservation _ci_reservation my-h100s 'res-' '1res' 'res_1' "${OPT_NAME_TRAPS[@]}"
opt_type image-family machine_check_family "$DLVM_FAMILY" 'fam-' 'Fam' 'fam_1' "${OPT_NAME_TRAPS[@]}"

opt --vm-name type=vm-name env=VM_NAME meta=NAME old=--name \
  help='VM name (default hfgpu-vm, or an existing gpu-transformers-vm, the old|default; INSTANCE_NAME is still read)'
opt --zone type=zone env=ZONE meta=ZONE conflicts=--zones bad=europe-west4-a \
  conflicts-why="--zones is the whole list of zones to try, in order, its first one tried first; put your zone first in --zones, or give --zone alone (the region's other zones follow it)" \
  help="first zone to try, in LOCATION's region (default: the region's first|zone, e.g. us-east4-a)"
opt --zones type=zones var=ZONES_FLAG meta=Z1,Z2,... bad=us-east4-a,europe-west4-a \
  help="zones to try, in this order, when one is out of GPUs, all in LOCATION's|region (default: the zone, then the region's other zones, alphabetically)"
opt --machine-type type=machine-type var=MACHINE_TYPE meta=TYPE \
  help='default a3-highgpu-1g (1 x H100 80GB; Spot or Flex-start only, so the|default VM is Spot); on demand and cheaper: g2-standard-8 (1 x L4)'
opt --accelerator type=accelerator var=ACCELERATOR meta=TYPE,count=N \
  help='GPUs for N1 types, which need it (e.g. nvidia-tesla-t4,count=1);|A2/A3/A4/G2 types come with their GPUs'
opt --spot type=switch var=PROVISIONING value=spot conflicts=--flex-start,--on-demand,--reservation \
  conflicts-why="$CI_ONE_PROVISIONING" \
  help='Spot VM: stopped (not deleted) when reclaimed, about 30 s notice;|launch_training.sh --restart-on-preemption resumes'
opt --flex-start type=switch var=PROVISIONING value=flex-start conflicts=--on-demand,--reservation \
  conflicts-why="$CI_ONE_PROVISIONING" \
  help="Flex-start (Dynamic Workload Scheduler): runs up to --max-run-duration,|then is deleted; no preemption meanwhile; A2/A3/A4/G2 types only; needs|gcloud's alpha component"
opt --on-demand type=switch var=PROVISIONING value=on-demand conflicts=--reservation \
  conflicts-why="$CI_ONE_PROVISIONING" \
  help='a standard VM; refused for types Google does not offer on demand|(a3-highgpu-1g/2g/4g, a3-megagpu-8g, a3-ultragpu-8g, a4-highgpu-8g)'
opt --reservation type=reservation var=RESERVATION meta=NAME \
  help='consume this specific reservation. Without any of these four: on demand|where Google offers it, else Spot (said in one line)'
opt --max-run-duration type=duration var=MAX_RUN_DURATION meta=DURATION needs=--flex-start \
  needs-why='it is how long a Flex-start VM runs before it is deleted, which this script sets only with --flex-start; add --flex-start, or drop --max-run-duration' \
  help="Flex-start's run time, 10m to 7d (default 7d), e.g. 36h or 1d12h"
opt --boot-disk-size type=disk-size var=BOOT_DISK_SIZE meta=SIZE \
  help='100GB to 64TB; default 200GB (the image is about 9 GB, caches grow); the|disk type follows the series: hyperdisk-balanced for A3 Ultra and A4, else|pd-balanced'
opt --service-account type=email var=SERVICE_ACCOUNT meta=EMAIL \
  help="the VM's identity (default hfgpu-vm@PROJECT.iam.gserviceaccount.com,|created when missing); it gets roles/artifactregistry.reader on the|repository, roles/logging.logWriter, and object rights on the bucket"
opt --checkpoint-bucket type=gs-url env=CHECKPOINT_BUCKET meta=gs://BUCKET/PATH \
  help="checkpoints that outlive the VM: the bucket is created in the VM's region|when missing, soft delete off"
opt --image-family type=image-family var=IMAGE_FAMILY meta=FAMILY \
  help="Deep Learning VM family with the NVIDIA driver|(default $DLVM_FAMILY)"
opt --image type=image-ref env=CONTAINER_NAME meta=REF old=--image-ref \
  help="the training image to run there (default HOST/PROJECT/REPO/IMAGE:TAG;|paste build_and_push.sh's digest line)"
opt --image-name type=image-name env=IMAGE_NAME meta=NAME help='image name, as for build_and_push.sh (default gpu_transformers);|--image NAME (no /, : or @) is its old spelling'
opt --project type=project env=PROJECT meta=ID help='Google Cloud project (default: gcloud config)'
opt --location type=region env=LOCATION meta=REGION bad=us \
  help='region of the repository, VM and bucket (default us-east4)'
opt --repo type=repo env=REPO_NAME meta=NAME help='Artifact Registry repository (default gpu-transformers)'
opt --tag type=tag env=TAG meta=TAG help='the image tag (default: the VERSION file)'
opt --dry-run type=switch var=DRY_RUN help='print every gcloud command, quoted, and change nothing'
