# shellcheck shell=bash
# shellcheck disable=SC2034 # GCP_STATE and GCP_OUT are read by the scripts that source this
# Summary: Google Cloud helpers shared by build_and_push.sh and create_instance.sh: naming
# rules, the gcloud preflight, and describe-or-create for any resource.
# Each validate_* function dies with one line naming the problem and the fix; its optional
# second argument names where the value came from (`config_origin NAME`, or a flag).
# Source it after lib/common.sh (it uses `die`, `log`, `need_cmd` and `quote_cmd`).

# _from ORIGIN: " (ORIGIN)" for an error line, or nothing.
_from() { printf '%s' "${1:+ ($1)}"; }

validate_location() {
  local loc=$1
  [[ $loc =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] &&
    die "invalid location '$loc'$(_from "${2:-}"): that is a zone; use its region, e.g. --location ${loc%-*}"
  [[ $loc =~ ^([a-z]+-[a-z]+[0-9]+|us|europe|asia)$ ]] ||
    die "invalid location '$loc'$(_from "${2:-}"): use a region like us-east4" \
      "or a multi-region (us, europe, asia)"
}

validate_repo() {
  [[ $1 =~ ^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$ ]] ||
    die "invalid repository name '$1'$(_from "${2:-}"): use 1-63 lowercase letters, digits and hyphens," \
      "starting with a letter and not ending with a hyphen"
}

validate_image() {
  local part='[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*'
  [[ $1 =~ ^$part(/$part)*$ && ${#1} -le 255 ]] ||
    die "invalid image name '$1'$(_from "${2:-}"): use lowercase letters and digits," \
      "separated by '.', '_', '__' or '-' (and '/')"
}

validate_tag() {
  [[ $1 =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] ||
    die "invalid tag '$1'$(_from "${2:-}"): use up to 128 letters, digits, '_', '.' and '-'," \
      "not starting with '.' or '-'"
}

validate_project() {
  local p=$1
  [[ $p == *:* ]] &&
    die "invalid project id '$p'$(_from "${2:-}"): domain-scoped projects are not supported;" \
      "use a project whose id has no ':'"
  [[ $p =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
    die "invalid project id '$p'$(_from "${2:-}"): use 6-30 lowercase letters, digits and hyphens," \
      "starting with a letter and not ending with a hyphen (the project ID, not its name or number)"
}

validate_registry_host() {
  [[ $1 =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$ ]] ||
    die "invalid registry host '$1'$(_from "${2:-}"): use a host name with an optional :port," \
      "e.g. us-east4-docker.pkg.dev"
}

validate_zone() {
  [[ $1 =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] ||
    die "invalid zone '$1'$(_from "${2:-}"): use a zone like us-east4-a (region plus a letter)"
}

validate_instance_name() {
  [[ $1 =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "invalid instance name '$1'$(_from "${2:-}"): use 1-63 lowercase letters, digits and hyphens," \
      "starting with a letter and not ending with a hyphen"
}

# gcp_preflight: gcloud is installed and authenticated, or one line saying how to fix it.
gcp_preflight() {
  local hint="preflight: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
  need_cmd gcloud "$hint or run this in Cloud Shell"
  gcloud auth print-access-token --quiet >/dev/null 2>&1 ||
    die "preflight: gcloud is not authenticated; run: gcloud auth login (Cloud Shell: authorize when asked)"
}

# gcp_describe_or_create STEP WHAT READ_FIX [CREATE_FIX]: run the command in the array
# GCP_DESCRIBE; when it answers "not found", run the one in GCP_CREATE. Sets GCP_STATE
# (exists, created or dry-run) and GCP_OUT (the last command's output). STEP prefixes the
# log and error lines, WHAT names the resource ("gpu-transformers in us-east4"); READ_FIX
# and CREATE_FIX end the error line when the describe or the create fails. A create that
# answers ALREADY_EXISTS (someone created it meanwhile) counts as exists.
# Under DRY_RUN=1 it prints both commands and runs neither.
gcp_describe_or_create() {
  local step=$1 what=$2 read_fix=$3 create_fix=${4:-}
  GCP_STATE='' GCP_OUT=''
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "${GCP_DESCRIBE[@]}"
    printf '# only when the describe above answers NOT_FOUND:\n'
    quote_cmd "${GCP_CREATE[@]}"
    GCP_STATE=dry-run
    return 0
  fi
  log "$step: checking $what"
  if GCP_OUT=$("${GCP_DESCRIBE[@]}" 2>&1); then
    GCP_STATE=exists
    return 0
  fi
  grep -qiE 'was not found|NOT_FOUND' <<<"$GCP_OUT" ||
    die "$step: cannot read $what: $(gcloud_error "$GCP_OUT"); $read_fix"
  log "$step: $what not found; creating it"
  if GCP_OUT=$("${GCP_CREATE[@]}" 2>&1); then
    GCP_STATE=created
  elif grep -q ALREADY_EXISTS <<<"$GCP_OUT"; then
    GCP_STATE=exists
  else
    die "$step: creating $what failed: $(gcloud_error "$GCP_OUT")${create_fix:+; $create_fix}"
  fi
}

# gcloud_error TEXT: gcloud's error from its output, as one line. gcloud prints an operation's
# error as YAML ("Could not fetch resource:" / "---" / "code: X" / "message: ..." wrapped over
# indented lines, perhaps "errorDetails:" after it); that becomes "X: message". A google.rpc
# Status's details ("- '@type': ...ErrorInfo") and a quota's tab-indented details are cut. The note on
# the access-token file and the "ERROR: (gcloud.command)" prefix are dropped. Without an
# ERROR line: the last line.
gcloud_error() {
  local err
  err=$(sed -n '/^ERROR:/,$p' <<<"$1" | sed -E \
    -e 's/^ERROR: \(gcloud[^)]*\) //' \
    -e '/^---$/d' \
    -e '/^ *(- )?errorDetails:/,$d' \
    -e "/^- '@type':/,\$d" \
    -e '/^	/d' \
    -e 's/^- code: /code: /' \
    -e 's/^ *code: ([A-Z0-9_]+)$/\1:/' \
    -e 's/^ *(- )?message: //' \
    -e 's/^ *- //' | tr -s '\n\t ' ' ')
  err=${err//Could not fetch resource: /}
  err=$(sed -E 's/ This command is authenticated with an access token from .* property\.?//' <<<"$err")
  err=${err% }
  if [[ -z $err ]]; then
    err=$(tail -n1 <<<"$1")
  fi
  printf '%s\n' "${err:0:400}"
}
