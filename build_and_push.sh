#!/usr/bin/env bash
# Summary: build the training image with BuildKit and push it to Google Artifact Registry.
# Usage: build_and_push.sh [OPTIONS]     (the options: below, declared in lib/options/build_and_push.sh)
#
# Steps: every input checked (nothing is created before), preflight, repository and its cleanup
# policy (before the build, as in cloudbuild.yaml: a disabled API or a missing role shows at once),
# build, auth, push. Configuration: flags, then the environment, then ./.env (or CONFIG_FILE), then
# the defaults (each option's env name is in its line below).
# Tags: TAG, sha-<commit>, latest (pushed in that order: latest moves only when the others
# landed). A dirty checkout (build_image/, app/ or lib/kv.sh changed, or untracked files in
# them) is tagged TAG and sha-<commit>-dirty only: latest never points at a dirty build.
# Files git ignores never reach the image (.dockerignore).
# On success the last line on stdout is the image reference with its digest:
#   HOST/PROJECT/REPO/IMAGE@sha256:...

set -euo pipefail

# shellcheck source=lib/common.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/flags.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/flags.sh"
# shellcheck source=lib/gcp.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/gcp.sh"
# shellcheck source=lib/options.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/options.sh"
# shellcheck source=lib/options/build_and_push.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib/options/build_and_push.sh"
# shellcheck disable=SC2034 # read by lib/common.sh's log/warn/die
PROG=build_and_push.sh

# The image's inputs, relative to the repository root: what .dockerignore lets through.
readonly CONTEXT_PATHS=(build_image app lib/kv.sh .dockerignore)
NO_PUSH=0
DIRTY=
COMPRESSION=gzip
KEEP=20
REPO_POLICIES=
REPO_WAITED=0

# -- preflight ---------------------------------------------------------------------------

# check_zstd_exporter: --compression zstd needs `docker buildx build --output type=image,...`
# (Debian's docker.io 20.10 has BuildKit built in but no buildx, and its builder cannot write
# zstd). Fatal before anything is created; under --dry-run a warning, and the command is shown.
check_zstd_exporter() {
  [[ $COMPRESSION == zstd ]] || return 0
  docker buildx version >/dev/null 2>&1 && return 0
  local client why
  client=$(docker version --format '{{.Client.Version}}' 2>/dev/null || true)
  why="--compression zstd: docker client ${client:-?} ($(command -v docker)) has no buildx plugin, whose image"
  why+=" exporter writes zstd layers; install it (apt-get install docker-buildx-plugin, or docker-buildx)"
  why+=" or use --compression gzip"
  [[ $DRY_RUN == 1 ]] && warn "$why" && return 0
  die "$why"
}

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
  die "preflight: BuildKit unavailable: docker client ${client:-?} ($(command -v docker)) has no buildx plugin;" \
    "install it (apt-get install docker-buildx-plugin, or docker-buildx) or put a client with BuildKit" \
    "built in first on PATH (Debian's docker.io 20.10: /usr/bin/docker)"
}

preflight() {
  if [[ $NO_PUSH == 1 ]]; then
    log "preflight: checking docker and BuildKit"
  else
    log "preflight: checking docker, BuildKit and gcloud"
  fi
  local hint="preflight: install Docker (https://docs.docker.com/engine/install/;"
  need_cmd docker "$hint Debian: apt-get install docker.io)"
  check_buildkit
  check_zstd_exporter
  local err
  if ! err=$(docker info --format '{{.ServerVersion}}' 2>&1 >/dev/null); then
    err=$(printf '%s\n' "$err" | grep -m1 -v '^$' || true)
    die "preflight: the Docker daemon is not reachable (${DOCKER_HOST:-default socket}): ${err:-no answer};" \
      "start it (sudo systemctl start docker) or fix DOCKER_HOST"
  fi
  [[ $NO_PUSH == 1 ]] || gcp_preflight
}

# -- git facts for tags and labels -------------------------------------------------------

# git_facts: sets REVISION (full commit, +-dirty), SHA_TAG (sha-<7>[-dirty]), DIRTY, CREATED
# and SOURCE. "Dirty": the image's inputs (CONTEXT_PATHS) differ from the commit, or hold
# files git does not track (and does not ignore: those never reach the image).
git_facts() {
  REVISION=unknown
  SHA_TAG=
  SOURCE=unknown
  CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local root=$HFGPU_ROOT commit
  if ! command -v git >/dev/null 2>&1 ||
    ! commit=$(git -C "$root" rev-parse --verify -q HEAD 2>/dev/null); then
    warn "tags: not a git checkout; no sha-<commit> tag, revision label 'unknown'"
    return 0
  fi
  if [[ -n $(git -C "$root" status --porcelain --untracked-files=all -- "${CONTEXT_PATHS[@]}" 2>/dev/null) ]]; then
    DIRTY=-dirty
    warn "tags: build_image/ or app/ has uncommitted or untracked files: tagging sha-${commit:0:7}-dirty," \
      "and latest is not moved; commit them for a clean build"
  else
    # A clean tree: the commit's time, so a rebuild of the same commit is identical.
    CREATED=$(TZ=UTC0 git -C "$root" log -1 --date=format-local:%Y-%m-%dT%H:%M:%SZ --format=%cd HEAD)
  fi
  REVISION=$commit$DIRTY
  SHA_TAG=sha-${commit:0:7}$DIRTY
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
  [[ $COMPRESSION == zstd ]] && cmd=(docker buildx build -f "$HFGPU_ROOT/build_image/Dockerfile")
  cmd+=(--build-arg "VERSION=$VERSION")
  cmd+=(--build-arg "REVISION=$REVISION")
  cmd+=(--build-arg "CREATED=$CREATED")
  cmd+=(--build-arg "SOURCE=$SOURCE")
  # No BUILDKIT_INLINE_CACHE here (cloudbuild.yaml sets it for its --cache-from): BuildKit 0.8
  # writes the inline cache's records into the image config in an unstable order when steps
  # share a command (the dependency part steps), so a clean commit would not rebuild to the
  # same digest. Nothing of ours reads a local build's inline cache.
  [[ -n $BASE_IMAGE ]] && cmd+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  [[ -n $CA_BUNDLE ]] && cmd+=(--secret "id=ca_bundle,src=$CA_BUNDLE")
  if [[ $COMPRESSION == zstd ]]; then
    zstd_output "${refs[@]}"
  else
    for ref in "${refs[@]}"; do
      cmd+=(-t "$ref")
    done
  fi
  cmd+=("$HFGPU_ROOT")
  log "build: ${refs[0]} (BuildKit, context $HFGPU_ROOT)"
  run_to_stderr "${cmd[@]}" || die "build: docker build failed (see its output above); nothing was tagged or pushed"
}

# zstd_output REFS...: the zstd build pushes as it exports: every tag but the trailing latest
# in one go (BuildKit's image exporter; the names quoted as one CSV field), its digest written
# to the metadata file.
zstd_output() {
  local names=("$@") joined
  last_is_latest "$@" && unset 'names[-1]'
  joined=$(
    IFS=,
    printf '%s' "${names[*]}"
  )
  cmd+=(--metadata-file "$ZSTD_METADATA"
    --output "type=image,\"name=$joined\",push=true,compression=zstd,force-compression=true,oci-mediatypes=true")
}

# last_is_latest REFS...: main appended the latest tag (moved last), after at least one other.
last_is_latest() {
  local last=${!#}
  (($# > 1)) && [[ ${last##*:} == latest ]]
}

# push_zstd REFS...: the build pushed every tag but latest; latest now points at the same
# digest (moved last, as for gzip). Prints the digest reference.
push_zstd() {
  local refs=("$@") repo_ref=${1%:*} digest='' ref
  if [[ $DRY_RUN == 1 ]]; then
    last_is_latest "${refs[@]}" && quote_cmd docker buildx imagetools create --tag "${refs[-1]}" "$repo_ref@sha256:<digest>"
    printf '# then: %s@sha256:<digest printed by the build>\n' "$repo_ref"
    return 0
  fi
  digest=$(grep -oE '"containerimage.digest": *"sha256:[0-9a-f]{64}"' "$ZSTD_METADATA" | grep -oE 'sha256:[0-9a-f]{64}')
  [[ -n $digest ]] || die "push: no digest in the build's metadata file; see the build output above"
  if last_is_latest "${refs[@]}"; then
    ref=${refs[-1]}
    log "push: $ref"
    run_to_stderr docker buildx imagetools create --tag "$ref" "$repo_ref@$digest" ||
      die "push: moving $ref to $digest failed (see above); the other tags were pushed by the build"
  fi
  log "push: done (zstd layers); run it on the VM (Docker >= 23.0) with the reference below"
  printf '%s@%s\n' "$repo_ref" "$digest"
}

ensure_repository() {
  GCP_DESCRIBE=(gcloud artifacts repositories describe "$REPO_NAME" --project "$PROJECT"
    --location "$LOCATION" --format 'json(format,cleanupPolicies)')
  GCP_CREATE=(gcloud artifacts repositories create "$REPO_NAME" --project "$PROJECT"
    --location "$LOCATION" --repository-format docker
    --description "hfgpu training images" --quiet)
  local start=$SECONDS
  gcp_describe_or_create repository "$REPO_NAME in $LOCATION" artifactregistry.googleapis.com \
    "roles/artifactregistry.admin (to create the repository; roles/artifactregistry.writer to push)"
  # gcloud polls the create's long-running operation until it is done (AIP-151).
  REPO_WAITED=$((SECONDS - start))
  case $GCP_STATE in
    exists)
      local fmt
      fmt=$(sed -nE 's/^ *"format": "([A-Z_]+)".*/\1/p' <<<"$GCP_OUT" | head -n1)
      [[ $fmt == DOCKER || -z $fmt ]] ||
        die "repository: $REPO_NAME in $LOCATION exists but holds $fmt artifacts; choose another --repo"
      log "repository: $REPO_NAME exists; not created"
      REPO_POLICIES=$GCP_OUT
      ;;
    created)
      log "repository: $REPO_NAME created (Docker format, $LOCATION); waited ${REPO_WAITED}s for Google's" \
        "create operation to finish"
      ;;
  esac
}

# The cleanup policy --keep sets (artifact-registry/docs/repositories/cleanup-policy: a JSON list
# of {name, action: {type: Delete|Keep}, condition | mostRecentVersions}; a version that matches a
# Delete policy is deleted unless it matches a Keep policy). sha-* versions are deleted, except the
# newest KEEP versions of each image and any version that also has another tag (latest, a release
# tag, a tag someone set): a Keep policy lists every tag prefix that is not "sha-", since a
# condition cannot say "not".
readonly CLEANUP_IDS=(hfgpu-delete-sha hfgpu-keep-newest hfgpu-keep-named)

# not_sha_prefixes: the tag prefixes that match every tag not starting with "sha-" (docker tags:
# first character [A-Za-z0-9_], then [A-Za-z0-9_.-]), as a JSON list.
not_sha_prefixes() {
  local first=({0..9} {A..Z} {a..z} _) rest=({0..9} {A..Z} {a..z} _ . -) c out=()
  for c in "${first[@]}"; do [[ $c == s ]] || out+=("\"$c\""); done
  for c in "${rest[@]}"; do [[ $c == h ]] || out+=("\"s$c\""); done
  for c in "${rest[@]}"; do [[ $c == a ]] || out+=("\"sh$c\""); done
  for c in "${rest[@]}"; do [[ $c == - ]] || out+=("\"sha$c\""); done
  local IFS=,
  printf '[%s]\n' "${out[*]}"
}

cleanup_policy_json() {
  cat <<EOF
[
  {"name": "${CLEANUP_IDS[0]}", "action": {"type": "Delete"},
   "condition": {"tagState": "TAGGED", "tagPrefixes": ["sha-"]}},
  {"name": "${CLEANUP_IDS[1]}", "action": {"type": "Keep"}, "mostRecentVersions": {"keepCount": $KEEP}},
  {"name": "${CLEANUP_IDS[2]}", "action": {"type": "Keep"},
   "condition": {"tagState": "TAGGED", "tagPrefixes": $(not_sha_prefixes)}}
]
EOF
}

# ensure_cleanup_policy: the repository keeps the newest KEEP sha-* versions (--keep; 0: leave the
# repository's policies alone). Set only when the repository's policies differ; a repository with
# cleanup policies of its own is left alone (set-cleanup-policies replaces them all), in one line.
# A refusal is a warning: pushing does not depend on it.
ensure_cleanup_policy() {
  ((KEEP > 0)) || return 0
  local file ids ours out
  ids=$(sed -nE 's/^ *"id": "([^"]+)".*/\1/p' <<<"$REPO_POLICIES" | sort | tr '\n' ' ')
  ours=$(printf '%s\n' "${CLEANUP_IDS[@]}" | sort | tr '\n' ' ')
  if [[ $DRY_RUN == 1 ]]; then
    printf '# unless the repository has cleanup policies of its own, this cleanup policy file:\n'
    cleanup_policy_json | sed 's/^/#   /'
    printf '# is set with: %s\n' "$(quote_cmd gcloud artifacts repositories set-cleanup-policies "$REPO_NAME" \
      --project "$PROJECT" --location "$LOCATION" --policy FILE --no-dry-run)"
    return 0
  fi
  if [[ -n ${ids// /} && $ids != "$ours" ]]; then
    warn "repository: $REPO_NAME has cleanup policies of its own (${ids% }); --keep $KEEP not applied" \
      "(setting it would replace them): add a keep-newest-$KEEP rule yourself, or pass --keep 0"
    return 0
  fi
  if [[ -n ${ids// /} ]] && grep -qE "\"keepCount\": \"?$KEEP\"?,?$" <<<"$REPO_POLICIES"; then
    log "repository: the cleanup policy keeps the newest $KEEP sha-* versions (set already)"
    return 0
  fi
  file=$(mktemp "${TMPDIR:-/tmp}/hfgpu-cleanup.XXXXXX")
  cleanup_policy_json >"$file"
  if out=$(gcloud artifacts repositories set-cleanup-policies "$REPO_NAME" --project "$PROJECT" \
    --location "$LOCATION" --policy "$file" --no-dry-run --format none 2>&1); then
    log "repository: cleanup policy set: the newest $KEEP sha-* versions are kept; latest and other tags" \
      "are never deleted"
  else
    warn "repository: setting the cleanup policy failed: $(gcloud_error "$out"); old sha-* versions stay (and" \
      "are billed): $(gcp_fix "$out" artifactregistry.googleapis.com roles/artifactregistry.admin)"
  fi
  rm -f "$file"
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
      die "push: pushing $ref failed (see above); already pushed: ${done_list// /, }; not pushed: the rest," \
        "latest untouched. Check the registry and your roles/artifactregistry.writer, then rerun"
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

# validate: what the option table cannot say, before anything runs (lib/options.sh has checked
# each value, from flags, environment and .env alike, and the conflicts).
validate() {
  if [[ $NO_PUSH == 0 ]]; then
    config_default_project
    [[ -n $PROJECT ]] ||
      die "preflight: no project set; pass --project ID or run: gcloud config set project ID"
    validate_project "$PROJECT" "$(config_origin PROJECT)"
  fi
  # BuildKit's --secret src= wants a path it resolves the same from any folder.
  [[ -z $CA_BUNDLE ]] || CA_BUNDLE=$(realpath -e -- "$CA_BUNDLE")
}

main() {
  opt_help_first "$@"
  config_init
  opt_parse "$@"
  ((${#OPT_ARGS[@]} + ${#OPT_REST[@]} == 0)) ||
    die "unexpected argument $(q "${OPT_ARGS[0]:-${OPT_REST[0]:-}}"): build_and_push.sh takes options only; see --help"
  opt_check_config
  validate
  VERSION=$(tr -d '[:space:]' 2>/dev/null <"$HFGPU_ROOT/VERSION" || true)

  preflight
  git_facts

  # The tags: the release tag, the commit, latest (pushed last; never for a dirty tree).
  local tags=("$TAG") t refs=() host
  [[ -n $SHA_TAG && $SHA_TAG != "$TAG" ]] && tags+=("$SHA_TAG")
  [[ $TAG != latest && -z $DIRTY ]] && tags+=(latest)
  for t in "${tags[@]}"; do
    if [[ $NO_PUSH == 1 ]]; then
      refs+=("$(local_image "$t")")
    else
      refs+=("$(registry_image "$t")")
    fi
  done

  if [[ $NO_PUSH == 0 ]]; then
    ensure_repository
    ensure_cleanup_policy
  fi
  if [[ $COMPRESSION == zstd ]]; then
    # The zstd build pushes as it exports: the registry's credentials come first.
    ZSTD_METADATA=$(mktemp)
    trap 'rm -f "$ZSTD_METADATA"' EXIT
    configure_docker "$(registry_host)"
  fi
  build "${refs[@]}"
  if [[ $NO_PUSH == 1 ]]; then
    log "build: tagged ${refs[*]}; --no-push: nothing pushed"
    [[ $DRY_RUN == 1 ]] || printf '%s\n' "${refs[0]}"
    return 0
  fi
  if [[ $COMPRESSION == zstd ]]; then
    push_zstd "${refs[@]}"
    return 0
  fi
  host=$(registry_host)
  PUSH_LOG=$(mktemp)
  trap 'rm -f "$PUSH_LOG"' EXIT
  configure_docker "$host"
  push "${refs[@]}"
}

main "$@"
