# shellcheck shell=bash
# Summary: bake_vm_image.sh's options, declared once (lib/options.sh reads, checks and lists them).
# Source it after lib/machines.sh (the machine type, image family and disk size checks).

# Google's machine facts (also when lib/options.sh prints this table for the sweep).
# shellcheck source=lib/machines.sh
[[ -n ${DLVM_FAMILY:-} ]] || source "$HFGPU_ROOT/lib/machines.sh"

# The smallest baked disk in GB: the Deep Learning VM image plus about 9 GB of layers.
readonly BAKE_DISK_MIN_GB=50

_bake_disk_size() {
  machine_check_disk "$1" "$2" "$BAKE_DISK_MIN_GB" "the Deep Learning VM image and the image's layers need"
}

opt_type machine-type machine_check_name e2-standard-4 'a3-highgpu-3g' 'E2-STANDARD-4' 'e2_standard_4' \
  "${OPT_NAME_TRAPS[@]}"
opt_type image-family machine_check_family "$DLVM_FAMILY" 'fam-' 'Fam' 'fam_1' "${OPT_NAME_TRAPS[@]}"
opt_type disk-size _bake_disk_size 100GB 'lots' '40GB' '99TB' '1.5TB' '100gb' '-100GB' "$OPT_SUBST"

opt --image type=image-ref env=CONTAINER_NAME meta=REF \
  help="the training image (default HOST/PROJECT/REPO/IMAGE:TAG as for create_instance.sh);|it must be on this machine too (build_and_push.sh leaves it there): the family is named|after its layers"
opt --project type=project env=PROJECT meta=ID help="Google Cloud project (default: gcloud config); the image goes there"
opt --location type=region env=LOCATION meta=REGION bad=us \
  help="the region whose first zone is the default zone (default us-east4); a region,|not a multi-region, unless --zone is given"
opt --zone type=zone env=ZONE meta=ZONE \
  help="where the bake VM runs (default: LOCATION's first zone, alphabetically: us-east4-a,|but us-east1-b, as us-east1 has no zone -a)"
opt --machine-type type=machine-type var=MACHINE_TYPE meta=TYPE help='the bake VM: a cheap CPU type (default e2-standard-4)'
opt --image-family type=image-family var=SOURCE_FAMILY meta=FAMILY \
  help="the Deep Learning VM family to start from (default: create_instance.sh's,|common-cu129-ubuntu-2204-nvidia-580, project deeplearning-platform-release)"
opt --boot-disk-size type=disk-size var=DISK_SIZE meta=SIZE \
  help='the baked disk (default 100GB; 1TB too); VMs booted from it need at least as much'
opt --service-account type=email var=SERVICE_ACCOUNT meta=EMAIL \
  help="the bake VM's identity, which pulls the image (default the one create_instance.sh|makes: hfgpu-vm@PROJECT.iam.gserviceaccount.com)"
opt --timeout type=int:1:86400 var=TIMEOUT_S meta=SECONDS help='how long the bake VM may take to pull and power off (default 1800)'
opt --poll-seconds type=int:1:3600 var=POLL_S meta=N help='how often its state is read meanwhile (default 15)'
opt --dry-run type=switch var=DRY_RUN help='print every gcloud command, quoted, and change nothing'
