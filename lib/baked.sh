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

# baked_family REF: hfgpu-deps-<16 hex>, from the sha256 of the diff_ids (uncompressed layer
# digests, one a line) of REF's layers up to its last dependency layer. REF must be on this
# machine (build_and_push.sh leaves it there); status 1 and no output when it is not.
baked_family() {
  local layers=() above keep
  mapfile -t layers < <(docker image inspect --format '{{range .RootFS.Layers}}{{println .}}{{end}}' "$1" \
    2>/dev/null | grep .) || true
  above=$(code_layer_count)
  keep=$((${#layers[@]} - above))
  ((${#layers[@]} > 0 && above > 0 && keep > 0)) || return 1
  printf 'hfgpu-deps-%s\n' "$(printf '%s\n' "${layers[@]:0:keep}" | sha256sum | cut -c1-16)"
}
