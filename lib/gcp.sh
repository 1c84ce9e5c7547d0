# shellcheck shell=bash
# Summary: Google Cloud naming rules, shared by build_and_push.sh and create_instance.sh.
# Each validate_* function dies with one line naming the problem and the fix.
# Source it after lib/common.sh (it uses `die`).

validate_location() {
  local loc=$1
  [[ $loc =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] &&
    die "invalid location '$loc': that is a zone; use its region, e.g. --location ${loc%-*}"
  [[ $loc =~ ^([a-z]+-[a-z]+[0-9]+|us|europe|asia)$ ]] ||
    die "invalid location '$loc': use a region like us-east4 or a multi-region (us, europe, asia)"
}

validate_repo() {
  [[ $1 =~ ^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$ ]] ||
    die "invalid repository name '$1': use 1-63 lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen"
}

validate_image() {
  local part='[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*'
  [[ $1 =~ ^$part(/$part)*$ && ${#1} -le 255 ]] ||
    die "invalid image name '$1': use lowercase letters and digits, separated by '.', '_', '__' or '-' (and '/')"
}

validate_tag() {
  [[ $1 =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] ||
    die "invalid tag '$1': use up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
}

validate_project() {
  local p=$1
  [[ $p == *:* ]] &&
    die "invalid project id '$p': domain-scoped projects are not supported; use a project whose id has no ':'"
  [[ $p =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
    die "invalid project id '$p': use 6-30 lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen (the project ID, not its name or number)"
}

validate_registry_host() {
  [[ $1 =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$ ]] ||
    die "invalid registry host '$1': use a host name with an optional :port, e.g. us-east4-docker.pkg.dev"
}

validate_zone() {
  [[ $1 =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] ||
    die "invalid zone '$1': use a zone like us-east4-a (region plus a letter)"
}

validate_instance_name() {
  [[ $1 =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "invalid instance name '$1': use 1-63 lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen"
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
