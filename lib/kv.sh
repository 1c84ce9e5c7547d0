# shellcheck shell=bash
# Summary: the one KEY=VALUE line parser of the project: .env files (lib/common.sh), the
# launcher's --env-file, and the image's secrets file (copied into the image as
# /usr/local/lib/hfgpu/kv.sh for build_image/bin/entrypoint). Lines are parsed, never executed.

# kv_parse LINE: a NAME=VALUE line (an "export " prefix and leading blanks allowed; the value
# taken literally, a trailing CR dropped) into KV_KEY and KV_VALUE. False for blank lines,
# comments and anything else, which callers skip.
kv_parse() {
  local line=${1%$'\r'}
  [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || return 1
  # shellcheck disable=SC2034 # read by the caller
  KV_KEY=${BASH_REMATCH[2]} KV_VALUE=${BASH_REMATCH[3]}
}
