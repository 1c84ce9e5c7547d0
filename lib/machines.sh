# shellcheck shell=bash
# shellcheck disable=SC2034 # the MF_* variables are read by the scripts that source this
# Summary: Google's machine facts in one table, read by create_instance.sh and
# submit_vertex_job.sh: machine series -> built-in GPUs, boot disk type, how Compute Engine
# offers the type, and how Vertex AI schedules it. Each row names its sources (legend below).
#
# MACHINE_FACTS, one row per group of machine types, ';'-separated:
#   TYPES      extended regex, anchored, of the machine types of the row
#   SERIES     the series' name, as Google's pages write it
#   GPU        Compute Engine accelerator type built in; "attach" for N1 (GPUs given with
#              --accelerator, GPU_FACTS says which)
#   COUNT      GPUs per machine: a number, or N (the number before the type's final 'g')
#   BOOT       boot disk type to create (Hyperdisk Balanced where Persistent Disk is not offered)
#   GCE        provisioning models Compute Engine offers: on-demand spot flex-start reservation
#   SOURCES    keys of the legend
# A machine type no row matches (n2-standard-8 ...) has no GPU: on-demand, Spot and
# reservations, pd-balanced, no Flex-start.
#
# GPU_FACTS, one row per GPU, ';'-separated: Compute Engine name; Vertex AI name; Vertex
# Flex-start (yes/no); attachable to N1 (yes/no); SOURCES.
#
# Legend (checked 2026-12-06):
#   gpus      cloud.google.com/compute/docs/gpus ("GPU machine types": the GPUs of each type;
#             N1 takes T4, V100, P100, P4) and .../compute/docs/accelerator-optimized-machines
#   consume   cloud.google.com/ai-hypercomputer/docs/consumption-models ("Flex-start: any GPU
#             machine except A4X", "Spot: any GPU machine except A4X"; reservations for all)
#   director  cloud.google.com/cluster-director/docs/choose-consumption-option (A4, A3 Ultra and
#             A3 Mega: reservations, Flex-start or Spot; on demand is not among their options)
#   a3high    Compute Engine "GPU machine types", table "consumption option availability by
#             machine type": a3-highgpu-1g/2g/4g only as Spot or Flex-start; gpuhunt
#             (src/gpuhunt/providers/gcp.py) filters their on-demand offers the same way
#   flex      cloud.google.com/compute/docs/instances/about-flex-start-vms ("all
#             accelerator-optimized machine types (except A4X and G4)": not N1)
#   hyperdisk cloud.google.com/compute/docs/disks/hyperdisks, "Machine series support" (A4 and
#             A3 (H200) list Hyperdisk types only; A2, G2, N1 none) and .../hd-types/hyperdisk-balanced
#             ("Hyperdisk Balanced ... the only supported Hyperdisk types" for boot disks); Vertex
#             AI's DiskSpec (vertex-ai/docs/reference/rest/v1/DiskSpec) defaults A3 Ultra to
#             hyperdisk-balanced
#   vertexdws Vertex AI "Schedule training jobs with DWS" (Flex-start: L4, A100, H100, H200, B200)
#   vertexacc vertex-ai/docs/reference/rest/v1/MachineSpec#AcceleratorType (Vertex's GPU names)

readonly MACHINE_FACTS=(
  'a4-highgpu-8g;A4;nvidia-b200;8;hyperdisk-balanced;spot flex-start reservation;gpus director consume hyperdisk'
  'a3-ultragpu-8g;A3 Ultra;nvidia-h200-141gb;8;hyperdisk-balanced;spot flex-start reservation;gpus director consume hyperdisk'
  'a3-megagpu-8g;A3 Mega;nvidia-h100-mega-80gb;8;pd-balanced;spot flex-start reservation;gpus director consume hyperdisk'
  'a3-highgpu-8g;A3 High;nvidia-h100-80gb;8;pd-balanced;on-demand spot flex-start reservation;gpus consume a3high'
  'a3-highgpu-[124]g;A3 High;nvidia-h100-80gb;N;pd-balanced;spot flex-start;gpus a3high'
  'a2-highgpu-[1248]g;A2 Standard;nvidia-tesla-a100;N;pd-balanced;on-demand spot flex-start reservation;gpus consume flex hyperdisk'
  'a2-megagpu-16g;A2 Standard;nvidia-tesla-a100;16;pd-balanced;on-demand spot flex-start reservation;gpus consume flex hyperdisk'
  'a2-ultragpu-[1248]g;A2 Ultra;nvidia-a100-80gb;N;pd-balanced;on-demand spot flex-start reservation;gpus consume flex hyperdisk'
  'g2-standard-(4|8|12|16|32);G2;nvidia-l4;1;pd-balanced;on-demand spot flex-start reservation;gpus consume flex hyperdisk'
  'g2-standard-24;G2;nvidia-l4;2;pd-balanced;on-demand spot flex-start reservation;gpus consume flex hyperdisk'
  'g2-standard-48;G2;nvidia-l4;4;pd-balanced;on-demand spot flex-start reservation;gpus consume flex hyperdisk'
  'g2-standard-96;G2;nvidia-l4;8;pd-balanced;on-demand spot flex-start reservation;gpus consume flex hyperdisk'
  'n1-[a-z]+-[0-9]+;N1;attach;0;pd-balanced;on-demand spot reservation;gpus consume flex hyperdisk'
)

readonly GPU_FACTS=(
  'nvidia-b200;NVIDIA_B200;yes;no;vertexacc vertexdws'
  'nvidia-h200-141gb;NVIDIA_H200_141GB;yes;no;vertexacc vertexdws'
  'nvidia-h100-mega-80gb;NVIDIA_H100_MEGA_80GB;yes;no;vertexacc vertexdws'
  'nvidia-h100-80gb;NVIDIA_H100_80GB;yes;no;vertexacc vertexdws'
  'nvidia-a100-80gb;NVIDIA_A100_80GB;yes;no;vertexacc vertexdws'
  'nvidia-tesla-a100;NVIDIA_TESLA_A100;yes;no;vertexacc vertexdws'
  'nvidia-l4;NVIDIA_L4;yes;no;vertexacc vertexdws'
  'nvidia-tesla-t4;NVIDIA_TESLA_T4;no;yes;vertexacc vertexdws gpus'
  'nvidia-tesla-v100;NVIDIA_TESLA_V100;no;yes;vertexacc vertexdws gpus'
  'nvidia-tesla-p100;NVIDIA_TESLA_P100;no;yes;vertexacc vertexdws gpus'
  'nvidia-tesla-p4;NVIDIA_TESLA_P4;no;yes;vertexacc vertexdws gpus'
)

# The GPUs Vertex AI's Flex-start takes, for messages (from GPU_FACTS).
readonly VERTEX_FLEX_GPUS="L4, A100, H100, H200 and B200"

# The Deep Learning VM images every VM boots from (the GPU VMs, and the CPU VM that bakes an
# image): docs.cloud.google.com/deep-learning-vm/docs/images (updated 2026-04-10; driver 580,
# CUDA 12.9, supported until 2028-08). The family is a default; the project is fixed.
readonly DLVM_PROJECT=deeplearning-platform-release
readonly DLVM_FAMILY=common-cu129-ubuntu-2204-nvidia-580

# machine_facts TYPE: the row of TYPE as MF_SERIES, MF_GPU, MF_COUNT, MF_BOOT, MF_GCE and
# MF_SOURCES. Returns 1 (with the defaults of a type without GPUs) when no row matches.
machine_facts() {
  local row types series gpu count boot gce sources
  MF_SERIES='' MF_GPU='' MF_COUNT=0 MF_BOOT=pd-balanced MF_GCE='on-demand spot reservation' MF_SOURCES=''
  for row in "${MACHINE_FACTS[@]}"; do
    IFS=';' read -r types series gpu count boot gce sources <<<"$row"
    [[ $1 =~ ^($types)$ ]] || continue
    if [[ $count == N ]]; then
      count=${1##*-}
      count=${count%g}
    fi
    MF_SERIES=$series MF_GPU=$gpu MF_COUNT=$count MF_BOOT=$boot MF_GCE=$gce MF_SOURCES=$sources
    return 0
  done
  return 1
}

# machine_offers MODEL: the type last read by machine_facts is offered as MODEL on Compute Engine.
machine_offers() {
  [[ " $MF_GCE " == *" $1 "* ]]
}

# gpu_facts NAME: the row of a GPU given by its Compute Engine or Vertex AI name, as GF_GCE,
# GF_VERTEX, GF_VERTEX_FLEX (yes/no) and GF_N1 (yes/no). Returns 1 when no row matches.
gpu_facts() {
  local row gce vertex flex n1 sources
  GF_GCE='' GF_VERTEX='' GF_VERTEX_FLEX=no GF_N1=no
  for row in "${GPU_FACTS[@]}"; do
    IFS=';' read -r gce vertex flex n1 sources <<<"$row"
    [[ $1 == "$gce" || $1 == "$vertex" ]] || continue
    GF_GCE=$gce GF_VERTEX=$vertex GF_VERTEX_FLEX=$flex GF_N1=$n1
    return 0
  done
  return 1
}

# gpu_names FIELD: every GPU's name (FIELD 1: Compute Engine's, 2: Vertex AI's), sorted, one line.
gpu_names() {
  local row
  for row in "${GPU_FACTS[@]}"; do
    cut -d';' -f"$1" <<<"$row"
  done | sort | tr '\n' ' ' | sed 's/ $//'
}

# n1_gpus [FIELD]: the GPUs N1 types take, by Compute Engine's (FIELD 1, the default) or Vertex AI's
# (2) names, from GPU_FACTS, for messages.
n1_gpus() {
  local row
  for row in "${GPU_FACTS[@]}"; do
    [[ $(cut -d';' -f4 <<<"$row") == yes ]] && cut -d';' -f"${1:-1}" <<<"$row"
  done | paste -sd, - | sed 's/,/, /g'
}

# machine_gpu_mismatch TYPE GPU COUNT: the one line (without "error:") for GPUs (--accelerator GPU,
# COUNT) that machine type TYPE cannot take, as Google's machine facts say; returns 1 when they fit
# (or when TYPE is an accelerator-optimized type no row knows: the caller decides). GPU may be
# spelled as Compute Engine (nvidia-l4) or Vertex AI (NVIDIA_L4) spells it; the line names GPUs the
# same way, so create_instance.sh and submit_vertex_job.sh give the same line for the same input.
machine_gpu_mismatch() {
  local type=$1 gpu=$2 count=$3 field=1 own row series
  gpu_facts "$gpu" && [[ $gpu == "$GF_VERTEX" ]] && field=2
  if ! machine_facts "$type"; then
    [[ ! $type =~ ^(a[0-9]+x?|g[0-9]+)- ]] || return 1
    printf '%s takes no GPUs: --accelerator attaches GPUs to N1 types only (e.g. --machine-type n1-standard-8);' "$type"
    printf ' or pick a GPU machine type (g2-standard-8, a3-highgpu-1g) without --accelerator\n'
    return 0
  fi
  if [[ $MF_GPU == attach ]]; then
    gpu_facts "$gpu" && [[ $GF_N1 == yes ]] && return 1
    for row in "${MACHINE_FACTS[@]}"; do
      IFS=';' read -r _ series own _ <<<"$row"
      [[ $own != "${GF_GCE:-?}" ]] || break
      series=''
    done
    printf '%s cannot be attached to %s: N1 takes %s only; for %s pick its machine type (%sdocs/spot-and-zones.md)' \
      "$gpu" "$type" "$(n1_gpus "$field")" "$gpu" "${series:+$series: }"
    printf ' and leave out --accelerator\n'
    return 0
  fi
  gpu_facts "$MF_GPU" || return 1
  own=$GF_GCE
  [[ $field == 1 ]] || own=$GF_VERTEX
  [[ $gpu != "$own" && $gpu != "$MF_GPU" ]] || [[ $count != "$MF_COUNT" ]] || return 1
  printf '%s comes with %s x %s attached; leave out --accelerator (or pick a machine type for %s x %s)\n' \
    "$type" "$MF_COUNT" "$own" "$count" "$gpu"
}

# machine_check_name TYPE ORIGIN: TYPE has a machine type's shape, and an accelerator-optimized family
# (A*, G*) has a row here: otherwise one line naming ORIGIN (Google refuses a wrong name only after
# the request: for a VM after the account, roles and bucket are made; Vertex AI takes the job and
# fails it). The option type `machine-type` of create_instance.sh and submit_vertex_job.sh.
machine_check_name() {
  [[ $1 =~ ^[a-z][a-z0-9]*(-[a-z0-9]+)+$ ]] ||
    die "invalid machine type $(q "$1")$(_from "$2"): use a type like a3-highgpu-1g or g2-standard-8"
  machine_facts "$1" || [[ ! $1 =~ ^(a[0-9]+x?|g[0-9]+)- ]] ||
    die "$(q "$1")$(_from "$2") is not a GPU machine type lib/machines.sh knows (A2, A3 High/Mega/Ultra, A4," \
      "G2, N1); check the name (gcloud compute machine-types list --filter name=$1), or add its row there"
}

# A Compute Engine resource name (RFC 1035: compute/docs/naming-resources): families, reservations.
readonly COMPUTE_NAME_RE='^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$'
# The largest boot disk in GB: a Persistent Disk or Hyperdisk is at most 64 TB (compute/docs/disks).
readonly DISK_MAX_GB=65536

# machine_check_family FAMILY ORIGIN: FAMILY is an image family's name (create_instance.sh's and
# bake_vm_image.sh's --image-family).
machine_check_family() {
  [[ $1 =~ $COMPUTE_NAME_RE ]] ||
    die "invalid image family $(q "$1")$(_from "$2"): see gcloud compute images list --project $DLVM_PROJECT" \
      "--no-standard-images"
}

# disk_gb SIZE: a boot disk size (200, 200GB, 1TB; decimal, 1TB = 1024GB, as gcloud reads TB) in GB;
# status 1 when SIZE is not one.
disk_gb() {
  [[ $1 =~ ^([0-9]{1,9})(GB|TB)?$ ]] || return 1
  local gb=$((10#${BASH_REMATCH[1]}))
  [[ ${BASH_REMATCH[2]} != TB ]] || gb=$((gb * 1024))
  printf '%s\n' "$gb"
}

# machine_check_disk SIZE ORIGIN MIN_GB WHY: SIZE is a boot disk from MIN_GB to 64TB; WHY says what
# needs MIN_GB ("the Deep Learning VM image ... need").
machine_check_disk() {
  local gb
  gb=$(disk_gb "$1") || die "invalid boot disk size $(q "$1")$(_from "$2"): use a size like 200GB or 1TB"
  ((gb >= $3)) || die "boot disk $(q "$1")$(_from "$2") is too small: $4 at least ${3}GB; give e.g. 200GB"
  ((gb <= DISK_MAX_GB)) || die "boot disk $(q "$1")$(_from "$2") is too large: give at most 64TB"
}
