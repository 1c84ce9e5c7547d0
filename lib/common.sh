# shellcheck shell=bash
# Summary: the shell library that every script of the project sources: messages, dry-run
# execution, and the one place where the configuration names and their defaults are resolved.
#
# Configuration, highest priority first: command-line flags (each script applies
# them after config_init), environment variables, a .env-style file (CONFIG_FILE,
# default ./.env in the repository), then the defaults below. The names are the
# original walkthrough's:
#   LOCATION        Artifact Registry / GCE region            (us-east4)
#   PROJECT         Google Cloud project        (gcloud config get-value project)
#   REPO_NAME       Artifact Registry repository              (gpu-transformers)
#   IMAGE_NAME      image name                                (gpu_transformers)
#   TAG             image tag                                 (contents of VERSION)
#   REGISTRY_HOST   registry host                             (LOCATION-docker.pkg.dev)
#   CONTAINER_NAME  full image reference to run; overrides the above on the VM
#   VOLUME          host folder mounted at /volume            (./volume)
#   ZONE            Compute Engine zone                       (LOCATION's first zone)
#   VM_NAME         the GPU VM's name (INSTANCE_NAME still read)
#   CA_BUNDLE       extra CA bundle (PEM) for builds behind a TLS-intercepting proxy
#   BASE_IMAGE      the image's base (default: the Dockerfile's CUDA 12 base)
#   CHECKPOINT_BUCKET  gs://BUCKET/PATH where checkpoints outlive the VM
# config_origin NAME says where a value came from, so that an error about a value
# names its source ("CONTAINER_NAME from the environment", "--image", ".env").
# Set HFGPU_DEBUG=1 to trace every command with file:line.

# Where the repository lives (this file is lib/common.sh inside it).
HFGPU_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly HFGPU_ROOT

# shellcheck source=lib/kv.sh
source "$HFGPU_ROOT/lib/kv.sh"

if [[ ${HFGPU_DEBUG:-0} == 1 ]]; then
  export PS4='+ ${BASH_SOURCE[0]##*/}:${LINENO}: '
  set -x
fi

# log MESSAGE...: a progress line on stderr, prefixed with the program's name.
log() {
  warn_now
  printf '%s: %s\n' "${PROG:-${0##*/}}" "$*" >&2
}

# warn MESSAGE...: a warning on stderr.
warn() {
  warn_now
  printf '%s: warning: %s\n' "${PROG:-${0##*/}}" "$*" >&2
}

# warn_later MESSAGE...: a warning held back until the next log or warn line (the first progress
# line: the inputs were accepted), so that an error about an input stays the only line.
HFGPU_LATER=()
warn_later() { HFGPU_LATER+=("$*"); }

# warn_now: the warnings warn_later held back, now (from the script's own shell: a subshell's
# line would not clear them for the script, and they would show twice).
warn_now() {
  local m
  [[ $BASHPID == "$$" ]] || return 0
  for m in "${HFGPU_LATER[@]}"; do
    printf '%s: warning: %s\n' "${PROG:-${0##*/}}" "$m" >&2
  done
  HFGPU_LATER=()
}

# die MESSAGE...: one line on stderr naming the problem and the fix; exit 1.
die() {
  printf '%s: error: %s\n' "${PROG:-${0##*/}}" "$*" >&2
  exit 1
}

# usage FILE: print FILE's header comment (from line 2 to the first blank line).
usage() {
  sed -n '2,/^$/{/^$/d;s/^# \{0,1\}//;p}' "$1"
}

# The characters that end a line besides \n and the other control characters: NEL (U+0085), LINE
# SEPARATOR and PARAGRAPH SEPARATOR (U+2028, U+2029), as UTF-8 bytes, so that they are seen in the C
# locale too (where [[:cntrl:]] matches no byte above 127).
readonly HFGPU_LINE_BREAKS=($'\xc2\x85' $'\xe2\x80\xa8' $'\xe2\x80\xa9')

# has_line_break VALUE: true when VALUE holds a control character or another line break.
has_line_break() {
  local b
  [[ $1 != *[[:cntrl:]]* ]] || return 0
  for b in "${HFGPU_LINE_BREAKS[@]}"; do
    [[ $1 != *"$b"* ]] || return 0
  done
  return 1
}

# q VALUE: VALUE quoted for a message, as a shell would read it back: 'VALUE' in single quotes,
# or printf %q's form when it holds a quote or a line break ($'a\nb'), so that a newline
# never breaks the one-line error.
q() {
  if [[ $1 != *\'* ]] && ! has_line_break "$1"; then
    printf "'%s'" "$1"
  else
    LC_ALL=C printf '%q' "$1"
  fi
}

# DRY_RUN=1 makes `run` print commands instead of executing them (a script's --dry-run sets it).
# From the environment only 1 or 0: DRY_RUN=true must not mean a real run.
DRY_RUN=${DRY_RUN:-0}
[[ $DRY_RUN == [01] ]] ||
  die "DRY_RUN from the environment must be 1 or 0; got $(q "$DRY_RUN"); use --dry-run, or unset DRY_RUN"

# quote_cmd ARGS...: the command as one line a user can paste into a shell.
quote_cmd() {
  local out
  printf -v out '%q ' "$@"
  printf '%s\n' "${out% }"
}

# run ARGS...: execute a command, or under DRY_RUN=1 print it (quoted) to stdout.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "$@"
    return 0
  fi
  "$@"
}

# run_to_stderr ARGS...: `run`, with the command's own output on stderr, so that
# stdout carries only a script's result (or, under DRY_RUN=1, the printed commands).
run_to_stderr() {
  if [[ $DRY_RUN == 1 ]]; then
    run "$@"
  else
    "$@" >&2
  fi
}

# need_cmd NAME HINT: fail with HINT when NAME is not on PATH.
need_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH; $2"
}

# Every configuration name, and where its value came from (config_origin).
# INSTANCE_NAME is the old spelling of VM_NAME, still read.
readonly HFGPU_CONFIG_NAMES=(LOCATION PROJECT REPO_NAME IMAGE_NAME TAG REGISTRY_HOST CONTAINER_NAME
  VOLUME ZONE VM_NAME CA_BUNDLE BASE_IMAGE CHECKPOINT_BUCKET)
declare -gA HFGPU_CONFIG_ORIGIN=()

# config_load_file FILE: set configuration names from a KEY=VALUE file (lib/kv.sh), for
# the names the environment does not already set, as dotenv reads one: the last of a repeated
# name wins (VM_NAME over its old spelling INSTANCE_NAME, as in the environment); a value in
# quotes is taken as it is, an unquoted one loses its surrounding blanks and a ` # comment`; blank
# lines, # comments, a byte-order mark and CRLF line ends are skipped; an empty value is an error
# (remove the line for the default), and so is any other line that does not parse, naming the
# file and line. Runs with xtrace off: HFGPU_DEBUG=1 never shows a value from the file (it may
# hold a token).
config_load_file() {
  local traced=0
  [[ $- == *x* ]] && traced=1
  { set +x; } 2>/dev/null
  _config_load_file "$@"
  ((traced == 0)) || set -x
}

_config_load_file() {
  local path=$1 file=$1 line key name value n=0
  local -A from_file=()
  [[ -f $path ]] || return 0
  # The file's name as messages show it: quoted only when it would break the line.
  ! has_line_break "$path" || file=$(q "$path")
  while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    ((n > 1)) || line=${line#$'\xef\xbb\xbf'}
    line=${line%$'\r'}
    [[ $line =~ ^[[:space:]]*(#.*)?$ ]] && continue
    if ! kv_parse "$line"; then
      [[ ! $line =~ ^[[:space:]]*(export[[:space:]]+)?[A-Za-z_][A-Za-z0-9_]*[[:space:]]+= ]] ||
        die "$file:$n: a blank before '='; write NAME=VALUE with nothing between the name and the '='"
      die "$file:$n: not a NAME=VALUE line; write NAME=VALUE (a # starts a comment), or remove the line"
    fi
    key=$KV_KEY
    _config_dotenv_value "$KV_VALUE" "$file:$n: the value of $key"
    value=$DOTENV_VALUE
    name=$key
    [[ $key == INSTANCE_NAME ]] && name=VM_NAME
    [[ " ${HFGPU_CONFIG_NAMES[*]} " == *" $name "* ]] || continue
    # The environment wins over the file; in the file, VM_NAME wins over INSTANCE_NAME.
    [[ -z ${HFGPU_CONFIG_ORIGIN[$name]:-} || -n ${from_file[$name]:-} ]] || continue
    [[ $key != INSTANCE_NAME || ${from_file[$name]:-} != VM_NAME ]] || continue
    printf -v "$name" '%s' "$value"
    HFGPU_CONFIG_ORIGIN[$name]="$key in $file:$n"
    from_file[$name]=$key
  done <"$path"
  for name in "${!from_file[@]}"; do
    [[ -n ${!name} ]] ||
      die "${HFGPU_CONFIG_ORIGIN[$name]} is empty; give a value, or remove the line for the default"
  done
}

# _config_dotenv_value VALUE WHAT: VALUE as dotenv reads it into DOTENV_VALUE: 'x' and "x" taken as
# they are (blanks and a # comment may follow the closing quote), an unquoted value without its
# surrounding blanks and its ` # comment`. WHAT starts the error line for a quote left open.
_config_dotenv_value() {
  local value=$1 quote
  value=${value#"${value%%[![:space:]]*}"}
  if [[ $value == [\"\']* ]]; then
    quote=${value:0:1}
    if [[ $quote == '"' && $value =~ ^\"([^\"]*)\"[[:space:]]*(#.*)?$ ]] ||
      [[ $quote == "'" && $value =~ ^\'([^\']*)\'[[:space:]]*(#.*)?$ ]]; then
      DOTENV_VALUE=${BASH_REMATCH[1]}
      return 0
    fi
    [[ ${value:1} != *"$quote"* ]] ||
      die "$2 has text after its closing quote; put the whole value inside the quotes (a # comment may follow)"
    die "$2 opens a quote it does not close; close it on the same line"
  fi
  value=${value%%[[:space:]]#*}
  DOTENV_VALUE=${value%"${value##*[![:space:]]}"}
}

# config_init: environment, then CONFIG_FILE (or ./.env), then the defaults.
# PROJECT's default asks gcloud and so is left to config_default_project.
# Flags come last: a script sets them with config_set_flag.
config_init() {
  local name
  if [[ -z ${VM_NAME:-} && -n ${INSTANCE_NAME:-} ]]; then
    VM_NAME=$INSTANCE_NAME
    HFGPU_CONFIG_ORIGIN[VM_NAME]="INSTANCE_NAME from the environment"
  fi
  for name in "${HFGPU_CONFIG_NAMES[@]}"; do
    if [[ -n ${!name:-} && -z ${HFGPU_CONFIG_ORIGIN[$name]:-} ]]; then
      HFGPU_CONFIG_ORIGIN[$name]="$name from the environment"
    fi
  done
  config_load_file "${CONFIG_FILE:-$HFGPU_ROOT/.env}"
  config_default LOCATION us-east4
  config_default REPO_NAME gpu-transformers
  config_default IMAGE_NAME gpu_transformers
  # TAG's default is read from a file someone may edit: its origin is that file, so that the
  # option table checks it like any other value (a "1.0+local" there is no docker tag).
  if [[ -z ${TAG:-} ]]; then
    TAG=$(tr -d '[:space:]' 2>/dev/null <"$HFGPU_ROOT/VERSION" || true)
    HFGPU_CONFIG_ORIGIN[TAG]="TAG from $HFGPU_ROOT/VERSION"
  fi
  for name in "${HFGPU_CONFIG_NAMES[@]}"; do
    printf -v "$name" '%s' "${!name:-}"
  done
}

# config_default NAME VALUE: NAME=VALUE unless something set NAME already.
config_default() {
  if [[ -z ${!1:-} ]]; then
    printf -v "$1" '%s' "$2"
    HFGPU_CONFIG_ORIGIN[$1]="the default $1"
  fi
}

# config_set_flag NAME FLAG VALUE: a command-line flag sets NAME (it wins over all else).
config_set_flag() {
  printf -v "$1" '%s' "$3"
  HFGPU_CONFIG_ORIGIN[$1]=$2
}

# config_origin NAME: where NAME's value came from, for error lines, e.g.
# "CONTAINER_NAME from the environment", "VOLUME in ./.env", "--volume".
config_origin() {
  printf '%s\n' "${HFGPU_CONFIG_ORIGIN[$1]:-$1}"
}

# config_default_project: PROJECT from gcloud's configuration when still unset.
config_default_project() {
  if [[ -z $PROJECT ]] && command -v gcloud >/dev/null 2>&1; then
    PROJECT=$(gcloud config get-value project 2>/dev/null || true)
    [[ $PROJECT == "(unset)" ]] && PROJECT=
    HFGPU_CONFIG_ORIGIN[PROJECT]="gcloud's core/project"
  fi
  return 0
}

# registry_host: the Artifact Registry host for LOCATION unless REGISTRY_HOST is set.
registry_host() {
  printf '%s\n' "${REGISTRY_HOST:-${LOCATION}-docker.pkg.dev}"
}

# registry_image [TAG]: HOST/PROJECT/REPO_NAME/IMAGE_NAME:TAG.
registry_image() {
  printf '%s/%s/%s/%s:%s\n' "$(registry_host)" "$PROJECT" "$REPO_NAME" "$IMAGE_NAME" "${1:-$TAG}"
}

# local_image [TAG]: the local tag `build_and_push.sh --no-push` makes.
local_image() {
  printf '%s:%s\n' "$IMAGE_NAME" "${1:-$TAG}"
}
