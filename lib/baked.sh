# shellcheck shell=bash
# Baked VM images (docs/cold-start.md): a Compute Engine image whose disk already holds a training
# image's dependency layers, in an image family of the project's own named after those layers.
# Used by bake_vm_image.sh (makes one) and create_instance.sh (boots from it). Needs HFGPU_ROOT.

# code_layer_count: how many layers build_image/Dockerfile makes after its final `uv pip sync`
# step (the launcher scripts and app/): what a code change rebuilds, never baked.
code_layer_count() {
  awk '/uv pip sync/ { after = 1; next } after && /^(RUN|COPY|ADD) / { n++ } END { print n + 0 }' \
    "$HFGPU_ROOT/build_image/Dockerfile"
}

# dep_layer_count REF: how many of REF's layers are dependency layers (all but the code layers on
# top); status 1 and no output when REF is not on this machine or has no layer below the code.
dep_layer_count() {
  local total above
  total=$(docker image inspect --format '{{len .RootFS.Layers}}' "$1" 2>/dev/null) || return 1
  above=$(code_layer_count)
  ((total > above && above > 0)) || return 1
  printf '%s\n' $((total - above))
}

# deps_digest KEEP: the family's digest from diff_ids (uncompressed layer digests) on stdin, one a
# line: the first 16 hex of the sha256 of the first KEEP lines. deploy/vm-startup.sh computes the
# same on the bake VM (HFGPU_BAKE_LAYERS), so that a tag that moved is never baked under this name.
deps_digest() {
  grep . | head -n "$1" | sha256sum | cut -c1-16
}

# baked_family REF: hfgpu-deps-<16 hex>, from the diff_ids of REF's layers up to its last
# dependency layer. REF must be on this machine (build_and_push.sh leaves it there); status 1 and
# no output when it is not.
baked_family() {
  local keep
  keep=$(dep_layer_count "$1") || return 1
  printf 'hfgpu-deps-%s\n' "$(docker image inspect --format '{{range .RootFS.Layers}}{{println .}}{{end}}' "$1" |
    deps_digest "$keep")"
}

# registry_digest_ref REF: REPOSITORY@sha256:... that a registry gave for this machine's REF (docker
# push and docker pull record it in RepoDigests): the exact content, whatever the tag points at now.
# Status 1 when REF has none for its own repository (built here and never pushed, for one).
registry_digest_ref() {
  local repo=${1%@*} digest
  [[ ${repo##*/} == *:* ]] && repo=${repo%:*}
  while read -r digest; do
    [[ ${digest%@*} == "$repo" ]] && printf '%s\n' "$digest" && return 0
  done < <(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$1" 2>/dev/null)
  return 1
}
