# shellcheck shell=bash
# shellcheck disable=SC2034 # FLAG_SHIFT and VALUE are set here for the scripts that source this
# Summary: one way to read command-line options, for every script of the project.
# Source it after lib/common.sh (it uses `die`, `warn` and PROG).
#
#   --opt VALUE and --opt=VALUE mean the same; an on/off flag given a value
#   (--dry-run=1, --spot=true) is an error; numbers are decimal (08 is 8) and
#   range-checked where they are read.
#
# The parse loop of a script:
#   while (($#)); do
#     flag_begin "$1"
#     case $FLAG in
#       --image) flag_value "$@"; opt_image=$VALUE ;;
#       --dry-run) flag_switch; DRY_RUN=1 ;;
#       --) shift; script_args=("$@"); break ;;
#       -*) flag_unknown ;;
#       *) positional ...; FLAG_SHIFT=1 ;;
#     esac
#     shift "$FLAG_SHIFT"
#   done

FLAG='' FLAG_INLINE='' FLAG_HAS_INLINE=0 FLAG_SHIFT=1 VALUE=''

# flag_begin ARG: split --opt=VALUE into FLAG and FLAG_INLINE; FLAG_SHIFT=1.
flag_begin() {
  FLAG=$1 FLAG_INLINE='' FLAG_HAS_INLINE=0 FLAG_SHIFT=1
  if [[ $1 == --*=* ]]; then
    FLAG=${1%%=*}
    FLAG_INLINE=${1#*=}
    FLAG_HAS_INLINE=1
  fi
}

# flag_value "$@": the option's value into VALUE (inline, or the next argument).
# A separate value that looks like another option (--x) is refused: write --opt=--x.
flag_value() {
  if ((FLAG_HAS_INLINE)); then
    VALUE=$FLAG_INLINE FLAG_SHIFT=1
    return 0
  fi
  (($# >= 2)) || die "$FLAG needs a value; see ${PROG:-${0##*/}} --help"
  [[ $2 != --* ]] ||
    die "$FLAG needs a value but got the option $(q "$2"); give the value, or write" \
      "$FLAG=$(LC_ALL=C printf '%q' "$2") if you mean it"
  VALUE=$2 FLAG_SHIFT=2
}

# flag_switch: an on/off flag; refuse --flag=VALUE rather than ignore VALUE.
flag_switch() {
  ((FLAG_HAS_INLINE == 0)) ||
    die "$FLAG is an on/off flag and takes no value (got $(q "$FLAG=$FLAG_INLINE"));" \
      "write $FLAG alone to turn it on, or leave it out"
  FLAG_SHIFT=1
}

# flag_unknown: the one line for an option no case matched.
flag_unknown() {
  die "unknown option $FLAG; see ${PROG:-${0##*/}} --help"
}

# flag_deprecated NEW: warn that FLAG is an old spelling of NEW (kept for one release), with the
# script's first progress line (warn_later): a bad input after it still gives one line.
flag_deprecated() {
  warn_later "$FLAG is deprecated and will be removed in the next release; use $1"
}

# to_int VAR WHAT VALUE MIN [MAX]: VALUE as a decimal whole number in MIN..MAX into VAR.
# WHAT names where VALUE came from (a flag, or an environment variable) for the error.
# Leading zeros are decimal (08 is 8), never octal.
to_int() {
  local -n _to_int_var=$1
  local what=$2 value=$3 min=$4 max=${5:-} digits
  [[ $value =~ ^[0-9]{1,18}$ ]] ||
    die "$what must be a whole number${max:+ from $min to $max}; got $(q "$value")"
  digits=$((10#$value))
  if [[ -n $max ]] && ((digits < min || digits > max)); then
    die "$what must be from $min to $max; got $(q "$value")"
  fi
  ((digits >= min)) || die "$what must be at least $min; got $(q "$value")"
  # shellcheck disable=SC2034 # a nameref: the caller's variable
  _to_int_var=$digits
}
