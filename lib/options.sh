# shellcheck shell=bash
# shellcheck disable=SC2034 # OPT_ARGS, OPT_REST and the tables are read by the scripts and opt_dump
# Summary: one option table per script (lib/options/SCRIPT.sh), declared once, and everything about
# an option derived from it: parsing, validation of flags, environment and .env alike (before
# anything changes), the options part of --help, and the sweep of hostile values that
# tests/test_option_sweep.py generates from `opt_dump`.
# Source it after lib/common.sh, lib/flags.sh and lib/gcp.sh (it uses die, warn, to_int, the
# flag_* readers and the validate_* naming rules).
#
# Declaring, one `opt` per option, in the order --help lists them:
#   opt --vm-name type=vm-name env=VM_NAME meta=NAME old=--name help='the VM name (default hfgpu-vm)'
#   opt --keep type=int:0:10000 var=KEEP meta=N help='...'
#   opt --spot type=switch var=PROVISIONING value=spot conflicts=--flex-start,--on-demand
# Keys:
#   type=       switch, int:MIN:MAX, enum:A,B,..., or a type registered with opt_type (below, or
#               the script's own in its table file)
#   env=        a configuration name of lib/common.sh: the flag sets it (config_set_flag), and its
#               value from the environment or .env is checked by the same type (opt_check_config)
#   var=        the script's own variable instead (a switch sets it to value=, default 1)
#   repeat=1    may be given more than once; var= names an array the values are appended to
#   meta=       the value's name in --help (default VALUE)
#   old=        old spellings, comma-separated: accepted with a one-line deprecation warning
#   conflicts=  options it cannot be given with; needs= options it needs (comma-separated). Both are
#               between flags: the environment and .env hold defaults, which a flag replaces.
#   conflicts-why=, needs-why=
#               'REASON; FIX', one line, required with conflicts= and needs= (a table without it
#               does not load): the error line says it, e.g. `--a and --b cannot be given together:
#               REASON; FIX` or `--a needs --b: REASON; FIX`. It serves all of the option's
#               conflicts (or needs): declare a conflict on the side whose reason fits the pair.
#   example=    a valid value (the sweep gives it when it tries a conflict; default: the type's)
#   bad=        more values the option refuses beyond its type's, separated by '|'
#   help=       the --help text; a '|' starts a new line
#
# Rules every option follows: an empty value is an error, never a default (leave the option out
# for the default); a value with a newline or another control character is refused; every value
# in a message is shown quoted (`q`), so an error stays one line; a path type expands a leading
# `~` after '=' as the shell does after a space.
#
# A script's parse:  opt_help_first "$@"; config_init; opt_parse "$@"; opt_check_config
# (opt_help_first: --help works whatever the environment and .env hold).
# It then has its variables set, OPT_ARGS (arguments that are not options) and OPT_REST (those
# after `--`), OPT_GIVEN[--name]=1 for every option given and OPT_GIVEN_AS[--name] the spelling
# it was given by (the name, or an old spelling: what an error line names). A value is stored as
# checked: a number in decimal (--keep=08 is 8), a path with its ~ expanded. An old spelling's
# deprecation warning waits for the script's first progress line (lib/common.sh's log or warn), so
# that a bad input still gives one line.

declare -ga OPT_NAMES=() OPT_ARGS=() OPT_REST=()
declare -gA OPT_TYPE=() OPT_ENV=() OPT_VAR=() OPT_VALUE=() OPT_REPEAT=() OPT_META=() OPT_OLD=()
declare -gA OPT_CONFLICTS=() OPT_NEEDS=() OPT_EXAMPLE=() OPT_BAD=() OPT_HELP=() OPT_GIVEN=()
declare -gA OPT_CONFLICTS_WHY=() OPT_NEEDS_WHY=() OPT_GIVEN_AS=()
declare -gA OPT_ALIAS=() OPT_TYPE_FN=() OPT_TYPE_BAD=() OPT_TYPE_EXAMPLE=() OPT_TYPE_PATH=()
OPT_CHECKED='' OPT_EXPANDED=''

# The longest value any option takes (a path, an image reference with its digest, a docker
# argument); past it, a value is a mistake (a pasted file, a runaway substitution).
readonly OPT_MAX_LEN=1024

# opt_type NAME FUNCTION EXAMPLE [BAD...]: register a type. FUNCTION VALUE ORIGIN dies with one
# line when VALUE is not of the type; EXAMPLE is a valid value; each BAD is a value of the type's
# own traps, which the sweep tries on every option of the type. `opt_path_type NAME` marks a type
# whose leading ~ is expanded.
opt_type() {
  local name=$1 fn=$2 example=$3 bad
  shift 3
  OPT_TYPE_FN[$name]=$fn OPT_TYPE_EXAMPLE[$name]=$example
  printf -v bad '%s|' "$@"
  OPT_TYPE_BAD[$name]=${bad%|}
}
opt_path_type() { OPT_TYPE_PATH[$1]=1; }

# opt NAME KEY=VALUE...: declare an option (see the header).
opt() {
  local name=$1 kv key old
  shift
  [[ $name == --[a-z]* ]] || die "lib/options.sh: option '$name' must start with --"
  OPT_NAMES+=("$name")
  OPT_TYPE[$name]=switch OPT_META[$name]=VALUE
  for kv in "$@"; do
    key=${kv%%=*}
    case $key in
      type) OPT_TYPE[$name]=${kv#*=} ;;
      env) OPT_ENV[$name]=${kv#*=} ;;
      var) OPT_VAR[$name]=${kv#*=} ;;
      value) OPT_VALUE[$name]=${kv#*=} ;;
      repeat) OPT_REPEAT[$name]=${kv#*=} ;;
      meta) OPT_META[$name]=${kv#*=} ;;
      old) OPT_OLD[$name]=${kv#*=} ;;
      conflicts) OPT_CONFLICTS[$name]=${kv#*=} ;;
      needs) OPT_NEEDS[$name]=${kv#*=} ;;
      conflicts-why) OPT_CONFLICTS_WHY[$name]=${kv#*=} ;;
      needs-why) OPT_NEEDS_WHY[$name]=${kv#*=} ;;
      example) OPT_EXAMPLE[$name]=${kv#*=} ;;
      bad) OPT_BAD[$name]=${kv#*=} ;;
      help) OPT_HELP[$name]=${kv#*=} ;;
      *) die "lib/options.sh: option $name: unknown key '$key'" ;;
    esac
  done
  [[ -n ${OPT_ENV[$name]:-}${OPT_VAR[$name]:-} ]] || die "lib/options.sh: option $name needs env= or var="
  opt_why_declared "$name" conflicts "${OPT_CONFLICTS[$name]:-}" "${OPT_CONFLICTS_WHY[$name]:-}"
  opt_why_declared "$name" needs "${OPT_NEEDS[$name]:-}" "${OPT_NEEDS_WHY[$name]:-}"
  local -a olds
  IFS=, read -ra olds <<<"${OPT_OLD[$name]:-}"
  for old in "${olds[@]}"; do
    OPT_ALIAS[$old]=$name
  done
}

# opt_why_declared NAME KIND LIST WHY: option NAME's conflicts (or needs), LIST, come with WHY,
# 'REASON; FIX' on one line; a WHY without a LIST explains nothing.
opt_why_declared() {
  local name=$1 kind=$2 list=$3 why=$4
  if [[ -z $list ]]; then
    [[ -z $why ]] || die "lib/options.sh: option $name: $kind-why= without $kind=; drop it, or add $kind="
    return 0
  fi
  [[ -n $why ]] ||
    die "lib/options.sh: option $name: $kind=$list needs $kind-why='REASON; FIX', the reason and the fix" \
      "its error line gives"
  if [[ $why != *[![:space:]]'; '[![:space:]]* ]] || has_line_break "$why"; then
    die "lib/options.sh: option $name: $kind-why= must be 'REASON; FIX' on one line; got $(q "$why")"
  fi
}

# opt_base_type NAME: the type's name without its parameters (int:1:8 -> int).
opt_base_type() { printf '%s' "${OPT_TYPE[$1]%%:*}"; }

# opt_check NAME VALUE ORIGIN: VALUE as option NAME takes it into OPT_CHECKED (a number in
# decimal, a path with its ~ expanded), or one line naming ORIGIN and a fix.
opt_check() {
  local name=$1 value=$2 origin=$3 type=${OPT_TYPE[$1]} base
  base=${type%%:*}
  [[ -n $value ]] ||
    die "$origin is empty; give ${OPT_META[$name]}, or leave it out for the default (see --help)"
  [[ $value == *[![:space:]]* ]] ||
    die "$origin is blank ($(q "$value")); give ${OPT_META[$name]}, or leave it out for the default (see --help)"
  ! has_line_break "$value" ||
    die "$origin has a newline or another control character in $(q "$value"); give the value on one line"
  ((${#value} <= OPT_MAX_LEN)) ||
    die "$origin is ${#value} characters long, more than the $OPT_MAX_LEN any option takes; check the value"
  if [[ -n ${OPT_TYPE_PATH[$base]:-} ]]; then
    opt_expand_home "$value" "$origin"
    value=$OPT_EXPANDED
  fi
  OPT_CHECKED=$value
  case $base in
    int)
      local min max n
      IFS=: read -r _ min max <<<"$type"
      to_int n "$origin" "$value" "$min" "$max"
      OPT_CHECKED=$n
      ;;
    enum)
      local choices=${type#enum:}
      [[ $value != *,* && ,$choices, == *,"$value",* ]] ||
        die "$origin must be one of ${choices//,/, }; got $(q "$value")"
      ;;
    *)
      [[ -n ${OPT_TYPE_FN[$base]:-} ]] || die "lib/options.sh: option $name has an unknown type '$type'"
      "${OPT_TYPE_FN[$base]}" "$value" "$origin"
      ;;
  esac
}

# opt_expand_home VALUE ORIGIN: VALUE into OPT_EXPANDED, a leading ~ or ~USER expanded as the shell
# expands it before a space (~ is HOME, ~USER that user's home folder; an unknown USER stays as it
# is). No command substitution: it would drop a trailing newline the checks must see.
opt_expand_home() {
  local value=$1 user rest home=''
  OPT_EXPANDED=$value
  [[ $value == '~'* ]] || return 0
  user=${value%%/*}
  rest=${value:${#user}}
  user=${user#'~'}
  if [[ -z $user ]]; then
    [[ -n ${HOME:-} ]] ||
      die "$2 starts with ~ ($(q "$value")), but HOME is not set; set HOME, or write the full path"
    home=$HOME
  elif [[ $user =~ ^[A-Za-z0-9._][A-Za-z0-9._-]*$ ]] && command -v getent >/dev/null 2>&1; then
    home=$(getent passwd "$user" 2>/dev/null | cut -d: -f6) || home=''
  fi
  [[ -z $home ]] || OPT_EXPANDED=$home$rest
}

# opt_set NAME VALUE: store the value where the table says.
opt_set() {
  local name=$1 value=$2
  if [[ -n ${OPT_ENV[$name]:-} ]]; then
    config_set_flag "${OPT_ENV[$name]}" "$name" "$value"
  elif [[ -n ${OPT_REPEAT[$name]:-} ]]; then
    local -n _opt_array=${OPT_VAR[$name]}
    _opt_array+=("$value")
  else
    printf -v "${OPT_VAR[$name]}" '%s' "$value"
  fi
}

# opt_parse ARGS...: the command line, by the table. -h/--help prints the usage and exits 0.
opt_parse() {
  local name
  OPT_ARGS=() OPT_REST=()
  while (($#)); do
    flag_begin "$1"
    case $FLAG in
      -h | --help)
        flag_switch
        opt_usage "$0"
        exit 0
        ;;
      --)
        ((FLAG_HAS_INLINE == 0)) ||
          die "unknown option $(q "$1"); write -- alone to end the options (see ${PROG:-${0##*/}} --help)"
        shift
        OPT_REST=("$@")
        break
        ;;
      -*)
        name=$FLAG
        if [[ -n ${OPT_ALIAS[$name]:-} ]]; then
          name=${OPT_ALIAS[$name]}
          flag_deprecated "$name"
        fi
        [[ -n ${OPT_TYPE[$name]:-} ]] || opt_unknown "$1"
        if [[ ${OPT_TYPE[$name]} == switch ]]; then
          flag_switch
          opt_set "$name" "${OPT_VALUE[$name]:-1}"
        else
          flag_value "$@"
          opt_check "$name" "$VALUE" "$FLAG"
          opt_set "$name" "$OPT_CHECKED"
        fi
        OPT_GIVEN[$name]=1 OPT_GIVEN_AS[$name]=$FLAG
        ;;
      *) OPT_ARGS+=("$1") ;;
    esac
    shift "$FLAG_SHIFT"
  done
}

# opt_help_first ARGS...: -h or --help among ARGS (before --, and not an option's value) prints the
# usage and exits 0 before the configuration is read: a .env with a bad line must not hide --help.
opt_help_first() {
  local name
  while (($#)); do
    case $1 in
      --) return 0 ;;
      -h | --help)
        opt_usage "$0"
        exit 0
        ;;
      --*=*) ;;
      -*)
        name=${OPT_ALIAS[$1]:-$1}
        if [[ ${OPT_TYPE[$name]:-switch} != switch ]] && (($# > 1)); then shift; fi
        ;;
    esac
    shift
  done
}

# opt_unknown ARG: the one line for an option no row declares, with the nearest declared name.
opt_unknown() {
  local flag=$1 name near=''
  [[ $flag != --*=* ]] || flag=${flag%%=*}
  for name in "${OPT_NAMES[@]}"; do
    if ((${#flag} > 2)) && [[ $name == "$flag"* || $flag == "$name"* ]]; then
      near=$name
      break
    fi
  done
  [[ -n $near ]] && die "unknown option $(q "$flag"); did you mean $near? (see ${PROG:-${0##*/}} --help)"
  die "unknown option $(q "$flag"); see ${PROG:-${0##*/}} --help"
}

# opt_check_config: the values of env-backed options that no flag set (environment, .env) checked
# by their type, naming where they came from; then the conflicts and needs between given options,
# in the table's order, each refused with its declared reason and fix.
opt_check_config() {
  local name env other
  local -a others
  for name in "${OPT_NAMES[@]}"; do
    env=${OPT_ENV[$name]:-}
    # Not set (an empty environment variable is unset), or a default of lib/common.sh: nothing to
    # check. Anything else with an origin is checked, empty too (TAG from an empty VERSION file).
    [[ -n $env && -z ${OPT_GIVEN[$name]:-} && -n ${HFGPU_CONFIG_ORIGIN[$env]:-} ]] || continue
    [[ $(config_origin "$env") != "the default "* ]] || continue
    opt_check "$name" "${!env}" "$(config_origin "$env")"
    printf -v "$env" '%s' "$OPT_CHECKED"
  done
  for name in "${OPT_NAMES[@]}"; do
    [[ -n ${OPT_GIVEN[$name]:-} ]] || continue
    IFS=, read -ra others <<<"${OPT_CONFLICTS[$name]:-}"
    for other in "${others[@]}"; do
      [[ -z ${OPT_GIVEN[$other]:-} ]] ||
        die "${OPT_GIVEN_AS[$name]} and ${OPT_GIVEN_AS[$other]} cannot be given together:" \
          "${OPT_CONFLICTS_WHY[$name]}"
    done
    IFS=, read -ra others <<<"${OPT_NEEDS[$name]:-}"
    for other in "${others[@]}"; do
      [[ -n ${OPT_GIVEN[$other]:-} ]] || die "${OPT_GIVEN_AS[$name]} needs $other: ${OPT_NEEDS_WHY[$name]}"
    done
  done
}

# opt_help: the options part of --help, from the table.
opt_help() {
  local name head line env old_list=''
  local -a lines
  printf 'Options:\n'
  for name in "${OPT_NAMES[@]}"; do
    head="  $name"
    [[ ${OPT_TYPE[$name]} == switch ]] || head+=" ${OPT_META[$name]}"
    IFS='|' read -ra lines <<<"${OPT_HELP[$name]:-}"
    env=${OPT_ENV[$name]:-}
    if [[ -n $env ]]; then
      if ((${#lines[@]})); then lines[-1]+=" (env $env)"; else lines=("(env $env)"); fi
    fi
    ((${#lines[@]})) || lines=('')
    if ((${#head} < 26)); then
      printf '%-26s%s\n' "$head" "${lines[0]}"
    else
      printf '%s\n%-26s%s\n' "$head" '' "${lines[0]}"
    fi
    for line in "${lines[@]:1}"; do
      printf '%-26s%s\n' '' "$line"
    done
    [[ -z ${OPT_OLD[$name]:-} ]] || old_list+=" ${OPT_OLD[$name]//,/, } ($name),"
  done
  printf '  %-24s%s\n' '-h, --help' 'this help'
  [[ -z $old_list ]] || printf 'Old spellings, still read for one release:%s\n' "${old_list%,}"
}

# opt_usage FILE: the script's header comment (usage, summary, notes), then its options.
opt_usage() {
  usage "$1"
  printf '\n'
  opt_help
}

# opt_dump: the table as tab-separated lines for tests/test_option_sweep.py: name, type, env, var,
# repeat, conflicts, needs, a valid example, the values to refuse (type's and option's, '|'), the
# old spellings (','), 1 for a path type (its ~ is expanded), and the conflicts' and needs' why.
opt_dump() {
  local name base example bad
  for name in "${OPT_NAMES[@]}"; do
    base=$(opt_base_type "$name")
    example=${OPT_EXAMPLE[$name]:-${OPT_TYPE_EXAMPLE[$base]:-}}
    bad=${OPT_TYPE_BAD[$base]:-}
    [[ -z ${OPT_BAD[$name]:-} ]] || bad+=${bad:+|}${OPT_BAD[$name]}
    case $base in
      int)
        local min max
        IFS=: read -r _ min max <<<"${OPT_TYPE[$name]}"
        example=${OPT_EXAMPLE[$name]:-$min}
        bad+=${bad:+|}$((min - 1))\|$((max + 1))\|1.5\|ten\|0x10
        ;;
      enum)
        example=${OPT_EXAMPLE[$name]:-${OPT_TYPE[$name]#enum:}}
        example=${example%%,*}
        bad+=${bad:+|}bogus\|${example^^}
        # all the choices at once: one of them, not a list
        [[ ${OPT_TYPE[$name]} != *,* ]] || bad+=\|${OPT_TYPE[$name]#enum:}
        ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "${OPT_TYPE[$name]}" \
      "${OPT_ENV[$name]:-}" "${OPT_VAR[$name]:-}" "${OPT_REPEAT[$name]:-}" "${OPT_CONFLICTS[$name]:-}" \
      "${OPT_NEEDS[$name]:-}" "$example" "$bad" "${OPT_OLD[$name]:-}" "${OPT_TYPE_PATH[$base]:-}" \
      "${OPT_CONFLICTS_WHY[$name]:-}" "${OPT_NEEDS_WHY[$name]:-}"
  done
}

# -- the types every script shares ----------------------------------------------------------------
# Each FUNCTION VALUE ORIGIN dies with one line; the naming rules live in lib/gcp.sh.

_opt_text() { :; }
_opt_gs_url() {
  [[ $1 =~ ^gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])(/.*)?$ && ${BASH_REMATCH[1]} != goog* ]] ||
    die "invalid gs:// URL $(q "$1")$(_from "$2"): use gs://BUCKET/PATH, the bucket named with lowercase" \
      "letters, digits, '-', '_' and '.', not starting with 'goog'"
}
_opt_file() {
  [[ ! -d $1 ]] || die "invalid file $(q "$1")$(_from "$2"): it is a folder; give the file itself"
  [[ ! -L $1 || -e $1 ]] ||
    die "invalid file $(q "$1")$(_from "$2"): a broken or looping symbolic link; point it at a file"
  [[ ! -e $1 || -f $1 ]] ||
    die "invalid file $(q "$1")$(_from "$2"): a device, pipe or socket, not a file; give the file itself"
  [[ -f $1 && -r $1 ]] || die "invalid file $(q "$1")$(_from "$2"): no readable file there; check the path"
}
_opt_dir() {
  [[ ! -L $1 || -e $1 ]] ||
    die "invalid folder $(q "$1")$(_from "$2"): a broken or looping symbolic link; point it at a folder"
  [[ ! -e $1 || -d $1 ]] || die "invalid folder $(q "$1")$(_from "$2"): it is not a folder; give a folder"
}
_opt_pem_file() {
  _opt_file "$1" "$2"
  _opt_pem_content "$1" "$2"
}
# _opt_pem_content FILE ORIGIN: FILE (a readable file) holds a PEM certificate.
_opt_pem_content() {
  grep -q -- '-----BEGIN CERTIFICATE-----' "$1" ||
    die "invalid CA bundle $(q "$1")$(_from "$2"): no PEM certificate (-----BEGIN CERTIFICATE-----) in it;" \
      "give a PEM bundle (from DER: openssl x509 -inform der -in FILE -out FILE.pem)"
}
# A PEM bundle BuildKit gets as a secret (build_and_push.sh's --secret id=...,src=PATH): the resolved
# path (a relative path or a link may add one) can carry no comma, quote or line break.
_opt_buildkit_pem_file() {
  local real
  _opt_file "$1" "$2"
  real=$(realpath -e -- "$1") || die "invalid file $(q "$1")$(_from "$2"): no readable file there; check the path"
  if [[ ! -f $real ]] || has_line_break "$real"; then
    die "invalid CA bundle $(q "$1")$(_from "$2"): its real path has a line break; copy the bundle to a plain path"
  fi
  local shown=''
  [[ $real == "$1" ]] || shown=" ($(q "$real"))"
  [[ $real != *,* && $real != *\"* ]] ||
    die "invalid CA bundle $(q "$1")$(_from "$2"): the path$shown has a comma or a double quote," \
      "which BuildKit's --secret cannot carry; copy the bundle to a path without one"
  _opt_pem_content "$1" "$2"
}
_opt_image_ref() {
  # docker's reference grammar (distribution/reference): [HOST[:PORT]/]PATH[:TAG][@sha256:HEX]
  local comp='[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*'
  local host='[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]+)?'
  [[ $1 =~ ^($host/)?$comp(/$comp)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$ ]] ||
    die "invalid image reference $(q "$1")$(_from "$2"): use NAME:TAG or HOST/PATH/NAME@sha256:DIGEST" \
      "(64 hex digits), the name in lowercase"
}
_opt_email() {
  [[ $1 =~ ^[a-z0-9._-]+@[a-z0-9.-]+\.gserviceaccount\.com$ ]] ||
    die "invalid service account $(q "$1")$(_from "$2"): use its e-mail, NAME@PROJECT.iam.gserviceaccount.com"
}

_opt_region() { validate_location "$1" "$2"; }
_opt_zone() { validate_zone "$1" "$2"; }
_opt_zones() {
  local zone
  local -a zones
  [[ $1 != *,,* && $1 != ,* && $1 != *, ]] || die "$2 has an empty zone in $(q "$1"); use Z1,Z2,..."
  IFS=, read -ra zones <<<"$1"
  for zone in "${zones[@]}"; do
    validate_zone "$zone" "$2"
  done
}
_opt_project() { validate_project "$1" "$2"; }
_opt_repo() { validate_repo "$1" "$2"; }
_opt_image_name() { validate_image "$1" "$2"; }
_opt_tag() { validate_tag "$1" "$2"; }
_opt_registry_host() { validate_registry_host "$1" "$2"; }
_opt_vm_name() { validate_vm_name "$1" "$2"; }

# The traps every name type shares: a substitution, a leading dash, spaces, capitals, too long.
# A command substitution the scripts must never run (the sweep checks that no PWNED file appears).
# shellcheck disable=SC2016 # literal on purpose
readonly OPT_SUBST='$(touch PWNED)'
readonly -a OPT_NAME_TRAPS=("$OPT_SUBST" '-x' 'a b' 'UPPER' "$(printf 'a%.0s' {1..300})")

opt_type text _opt_text 'any'
opt_type gs-url _opt_gs_url gs://my-bucket/runs 's3://b/p' 'gs://' 'gs:///p' 'gs://goog-b/p' 'gs://B_B/p' \
  "gs://$OPT_SUBST/p"
opt_type file _opt_file /etc/hostname '/no/such/file' '/etc' "$OPT_SUBST"
opt_type dir _opt_dir /tmp '/etc/hostname'
opt_type pem-file _opt_pem_file /etc/ssl/certs/ca-certificates.crt '/no/such/file' '/etc' /etc/hostname \
  /dev/null
opt_path_type file
opt_path_type pem-file
opt_type buildkit-pem-file _opt_buildkit_pem_file /etc/ssl/certs/ca-certificates.crt '/no/such/file' '/etc' \
  /etc/hostname /dev/null
opt_path_type buildkit-pem-file
opt_path_type dir
opt_type image-ref _opt_image_ref nginx:1 'UPPER:1' 'a@sha256:bad' 'a::1' 'a b' "$OPT_SUBST" '-x'
opt_type email _opt_email a@p.iam.gserviceaccount.com 'x' 'a@b' 'A@p.iam.gserviceaccount.com' "$OPT_SUBST"
opt_type region _opt_region us-east4 'us-east4-a' 'US-EAST4' 'mars' "${OPT_NAME_TRAPS[@]}"
opt_type zone _opt_zone us-east4-a 'us-east4' 'us-east4-A' "${OPT_NAME_TRAPS[@]}"
opt_type zones _opt_zones us-east4-a,us-east4-b 'us-east4-a,' ',us-east4-a' 'us-east4-a,,us-east4-b' \
  'us-east4-a us-east4-b' "${OPT_NAME_TRAPS[@]}"
opt_type project _opt_project my-project 'my:project' '123' 'my_project' "${OPT_NAME_TRAPS[@]}"
opt_type repo _opt_repo gpu-transformers 'repo-' '1repo' "${OPT_NAME_TRAPS[@]}"
opt_type image-name _opt_image_name gpu_transformers 'a//b' 'a-' "${OPT_NAME_TRAPS[@]}"
opt_type tag _opt_tag v1 '.v1' 'v:1' '-v1' 'a b' "$OPT_SUBST" "$(printf 'a%.0s' {1..129})"
opt_type registry-host _opt_registry_host us-east4-docker.pkg.dev 'host/path' 'host:port' \
  "${OPT_NAME_TRAPS[@]:0:3}"
opt_type vm-name _opt_vm_name hfgpu-vm 'vm-' '1vm' 'vm_1' "${OPT_NAME_TRAPS[@]}"

# Run as a program (tests/test_option_sweep.py): bash lib/options.sh SCRIPT prints SCRIPT's table.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  _root=$(cd "$(dirname "$0")/.." && pwd)
  # shellcheck source=lib/common.sh
  source "$_root/lib/common.sh"
  # shellcheck source=lib/flags.sh
  source "$_root/lib/flags.sh"
  # shellcheck source=lib/gcp.sh
  source "$_root/lib/gcp.sh"
  # shellcheck disable=SC1090 # the table named on the command line
  source "$_root/lib/options/${1:?usage: lib/options.sh SCRIPT (e.g. build_and_push)}.sh"
  opt_dump
fi
