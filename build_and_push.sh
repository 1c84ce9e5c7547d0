#!/usr/bin/env bash
# Summary: build the training image with BuildKit and push it to Google Artifact Registry.
# Usage: build_and_push.sh [--project ID] [--location REGION] [--repo NAME] [--image NAME]
#                          [--tag TAG] [--base-image IMAGE] [--ca-cert FILE]
#                          [--registry-host HOST] [--no-push] [--dry-run] [-h|--help]
#
#   --project ID          Google Cloud project (env PROJECT; default: gcloud config)
#   --location REGION     Artifact Registry region, e.g. us-east4 (env LOCATION)
#   --repo NAME           Artifact Registry repository (env REPO_NAME; gpu-transformers)
#   --image NAME          image name (env IMAGE_NAME; gpu_transformers)
#   --tag TAG             the release tag (env TAG; default: the VERSION file)
#   --base-image IMAGE    build argument BASE_IMAGE (default: the Dockerfile's CUDA 12 base)
#   --ca-cert FILE        extra CA bundle for the build (TLS-intercepting proxies), given
#                         to BuildKit as secret ca_bundle: it is never stored in a layer
#   --registry-host HOST  registry host (env REGISTRY_HOST; default LOCATION-docker.pkg.dev)
#   --no-push             build and tag locally only (IMAGE:TAG, IMAGE:sha-..., IMAGE:latest)
#   --dry-run             print every command, quoted, and change nothing
#
# Steps: preflight, build, repository, auth, push. Configuration: flags, then the
# environment, then ./.env (or CONFIG_FILE), then defaults. Tags pushed: TAG,
# sha-<commit>[-dirty], latest (in that order: latest moves only when the others landed).
# On success the last line on stdout is the image reference with its digest:
#   HOST/PROJECT/REPO/IMAGE@sha256:...

set -euo pipefail

# shellcheck source=lib/common.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/gcp.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/gcp.sh"
# shellcheck disable=SC2034 # read by lib/common.sh's log/warn/die
PROG=build_and_push.sh

BASE_IMAGE=
CA_CERT=
NO_PUSH=0

# -- preflight ---------------------------------------------------------------------------

# check_buildkit: `docker build` with BuildKit needs either the buildx plugin (Docker 23+
# clients hand `docker build` to it) or a pre-23 client with BuildKit built in.
check_buildkit() {
  if docker buildx version >/dev/null 2>&1; then
    return 0
  fi
  local client major
  client=$(docker version --format '{{.Client.Version}}' 2>/dev/null || true)
  major=${client%%.*}
  if [[ $major =~ ^[0-9]+$ ]] && ((major < 23)); then
    return 0
  fi
  die "preflight: BuildKit unavailable: docker client ${client:-?} ($(command -v docker)) has no buildx plugin; install it (apt-get install docker-buildx-plugin, or docker-buildx) or put a client with BuildKit built in first on PATH (Debian's docker.io 20.10: /usr/bin/docker)"
}

preflight() {
  if [[ $NO_PUSH == 1 ]]; then
    log "preflight: checking docker and BuildKit"
  else
    log "preflight: checking docker, BuildKit and gcloud"
  fi
  need_cmd docker "preflight: install Docker (https://docs.docker.com/engine/install/; Debian: apt-get install docker.io)"
  check_buildkit
  local err
  if ! err=$(docker info --format '{{.ServerVersion}}' 2>&1 >/dev/null); then
    err=$(printf '%s\n' "$err" | grep -m1 -v '^$' || true)
    die "preflight: the Docker daemon is not reachable (${DOCKER_HOST:-default socket}): ${err:-no answer}; start it (sudo systemctl start docker) or fix DOCKER_HOST"
  fi
  if [[ $NO_PUSH == 1 ]]; then
    return 0
  fi
  need_cmd gcloud "preflight: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) or run this in Cloud Shell"
  if ! gcloud auth print-access-token --quiet >/dev/null 2>&1; then
    die "preflight: gcloud is not authenticated; run: gcloud auth login (Cloud Shell: authorize when asked)"
  fi
}

# -- git facts for tags and labels -------------------------------------------------------

# git_facts: sets REVISION (full commit, +-dirty), SHA_TAG (sha-<7>[-dirty]), CREATED and
# SOURCE. "Dirty" means the image's inputs (build_image/, app/) differ from the commit.
git_facts() {
  REVISION=unknown
  SHA_TAG=
  SOURCE=unknown
  CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local root=$HFGPU_ROOT commit dirty=
  if ! command -v git >/dev/null 2>&1 || ! commit=$(git -C "$root" rev-parse --verify -q HEAD 2>/dev/null); then
    warn "tags: not a git checkout; no sha-<commit> tag, revision label 'unknown'"
    return 0
  fi
  if [[ -n $(git -C "$root" status --porcelain -- build_image app .dockerignore 2>/dev/null) ]]; then
    dirty=-dirty
  else
    # A clean tree: the commit's time, so a rebuild of the same commit is identical.
    CREATED=$(TZ=UTC0 git -C "$root" log -1 --date=format-local:%Y-%m-%dT%H:%M:%SZ --format=%cd HEAD)
  fi
  REVISION=$commit$dirty
  SHA_TAG=sha-${commit:0:7}$dirty
  local url
  url=$(git -C "$root" config --get remote.origin.url 2>/dev/null || true)
  # Never put credentials from a remote URL (https://user:token@host/...) into a label.
  url=$(printf '%s' "$url" | sed -E 's#^([a-z+]+://)[^/@]*@#\1#')
  SOURCE=${url:-unknown}
}

# -- steps -------------------------------------------------------------------------------

build() {
  local refs=("$@") cmd ref
  cmd=(env DOCKER_BUILDKIT=1 docker build -f "$HFGPU_ROOT/build_image/Dockerfile")
  cmd+=(--build-arg "VERSION=$VERSION")
  cmd+=(--build-arg "REVISION=$REVISION")
  cmd+=(--build-arg "CREATED=$CREATED")
  cmd+=(--build-arg "SOURCE=$SOURCE")
  cmd+=(--build-arg BUILDKIT_INLINE_CACHE=1)
  [[ -n $BASE_IMAGE ]] && cmd+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  [[ -n $CA_CERT ]] && cmd+=(--secret "id=ca_bundle,src=$CA_CERT")
  for ref in "${refs[@]}"; do
    cmd+=(-t "$ref")
  done
  cmd+=("$HFGPU_ROOT")
  log "build: ${refs[0]} (BuildKit, context $HFGPU_ROOT)"
  run_to_stderr "${cmd[@]}" || die "build: docker build failed (see its output above); nothing was tagged or pushed"
}

ensure_repository() {
  local describe create out fmt
  describe=(gcloud artifacts repositories describe "$REPO_NAME" --project "$PROJECT"
    --location "$LOCATION" --format 'value(format)')
  create=(gcloud artifacts repositories create "$REPO_NAME" --project "$PROJECT"
    --location "$LOCATION" --repository-format docker
    --description "gpu-transformers training images" --quiet)
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "${describe[@]}"
    printf '# only when the describe above answers NOT_FOUND:\n'
    quote_cmd "${create[@]}"
    return 0
  fi
  log "repository: checking $LOCATION/$REPO_NAME in project $PROJECT"
  if out=$("${describe[@]}" 2>&1); then
    fmt=$(printf '%s\n' "$out" | tail -n1)
    [[ $fmt == DOCKER ]] ||
      die "repository: $REPO_NAME in $LOCATION exists but holds ${fmt:-non-Docker} artifacts; choose another --repo"
    log "repository: $REPO_NAME exists; not created"
    return 0
  fi
  if ! grep -q NOT_FOUND <<<"$out"; then
    die "repository: cannot read $REPO_NAME in $LOCATION: $(gcloud_error "$out"); enable the API (gcloud services enable artifactregistry.googleapis.com) and check your role (roles/artifactregistry.admin to create)"
  fi
  log "repository: $REPO_NAME not found; creating it (Docker format, $LOCATION)"
  if ! out=$("${create[@]}" 2>&1); then
    grep -q ALREADY_EXISTS <<<"$out" && return 0
    die "repository: creating $REPO_NAME failed: $(gcloud_error "$out")"
  fi
}

configure_docker() {
  local host=$1
  log "auth: gcloud as Docker credential helper for $host"
  run_to_stderr gcloud auth configure-docker "$host" --quiet ||
    die "auth: gcloud auth configure-docker $host failed; run it yourself to see why"
}

# push REFS...: push each tag in order; print the digest reference. On a failure, name
# the tags already pushed; the later ones (latest last) were not touched.
push() {
  local refs=("$@") ref digest='' d pushed=()
  for ref in "${refs[@]}"; do
    if [[ $DRY_RUN == 1 ]]; then
      quote_cmd docker push "$ref"
      continue
    fi
    log "push: $ref"
    # The output goes to stderr as it comes and to a file, where the digest is read.
    if ! docker push "$ref" 2>&1 | tee "$PUSH_LOG" >&2; then
      local done_list=${pushed[*]:-none}
      die "push: pushing $ref failed (see above); already pushed: ${done_list// /, }; not pushed: the rest, latest untouched. Check the registry and your roles/artifactregistry.writer, then rerun"
    fi
    d=$(grep -oE 'digest: sha256:[0-9a-f]{64}' "$PUSH_LOG" | tail -n1 | cut -d' ' -f2)
    [[ -n $d ]] || die "push: no digest in the output of docker push $ref"
    if [[ -n $digest && $d != "$digest" ]]; then
      warn "push: $ref has digest $d, the first tag had $digest"
    fi
    digest=${digest:-$d}
    pushed+=("${ref##*:}")
  done
  local repo_ref=${refs[0]%:*}
  if [[ $DRY_RUN == 1 ]]; then
    printf '# then: %s@sha256:<digest printed by the push>\n' "$repo_ref"
    return 0
  fi
  log "push: done (${pushed[*]}); run it on the VM with the reference below"
  printf '%s@%s\n' "$repo_ref" "$digest"
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
      --no-push) NO_PUSH=1 ;;
      --dry-run) DRY_RUN=1 ;;
      --project | --location | --repo | --image | --tag | --base-image | --ca-cert | --registry-host)
        (($# >= 2)) || die "$flag needs a value; see --help"
        value=$2
        shift
        ;;
      --project=* | --location=* | --repo=* | --image=* | --tag=* | --base-image=* | --ca-cert=* | --registry-host=*)
        value=${flag#*=}
        flag=${flag%%=*}
        ;;
      *) die "unknown argument '$flag'; see --help" ;;
    esac
    case $flag in
      --project) PROJECT=$value ;;
      --location) LOCATION=$value ;;
      --repo) REPO_NAME=$value ;;
      --image) IMAGE_NAME=$value ;;
      --tag) TAG=$value ;;
      --base-image) BASE_IMAGE=$value ;;
      --ca-cert) CA_CERT=$value ;;
      --registry-host) REGISTRY_HOST=$value ;;
    esac
    shift
  done
}

main() {
  config_init
  parse_args "$@"

  # Validate every input before anything runs.
  validate_location "$LOCATION"
  validate_repo "$REPO_NAME"
  validate_image "$IMAGE_NAME"
  validate_tag "$TAG"
  [[ -z $REGISTRY_HOST ]] || validate_registry_host "$REGISTRY_HOST"
  [[ -z $CA_CERT || -r $CA_CERT ]] || die "--ca-cert: cannot read '$CA_CERT'; give a PEM bundle file"
  [[ -z $CA_CERT ]] || CA_CERT=$(cd "$(dirname "$CA_CERT")" && pwd)/$(basename "$CA_CERT")
  VERSION=$(tr -d '[:space:]' <"$HFGPU_ROOT/VERSION")
  if [[ $NO_PUSH == 0 ]]; then
    config_default_project
    [[ -n $PROJECT ]] ||
      die "preflight: no project set; pass --project ID or run: gcloud config set project ID"
  fi
  [[ -z $PROJECT ]] || validate_project "$PROJECT"

  preflight
  git_facts

  # The tags: the release tag, the commit, latest (pushed last).
  local tags=("$TAG") t refs=() host
  [[ -n $SHA_TAG && $SHA_TAG != "$TAG" ]] && tags+=("$SHA_TAG")
  [[ $TAG != latest ]] && tags+=(latest)
  for t in "${tags[@]}"; do
    if [[ $NO_PUSH == 1 ]]; then
      refs+=("$(local_image "$t")")
    else
      refs+=("$(registry_image "$t")")
    fi
  done

  build "${refs[@]}"
  if [[ $NO_PUSH == 1 ]]; then
    log "build: tagged ${refs[*]}; --no-push: nothing pushed"
    [[ $DRY_RUN == 1 ]] || printf '%s\n' "${refs[0]}"
    return 0
  fi
  host=$(registry_host)
  PUSH_LOG=$(mktemp)
  trap 'rm -f "$PUSH_LOG"' EXIT
  ensure_repository
  configure_docker "$host"
  push "${refs[@]}"
}

main "$@"
