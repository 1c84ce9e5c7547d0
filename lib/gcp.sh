# shellcheck shell=bash
# shellcheck disable=SC2034 # GCP_STATE and GCP_OUT are read by the scripts that source this
# Summary: Google Cloud helpers shared by build_and_push.sh, create_instance.sh and
# bake_vm_image.sh: naming rules, the gcloud preflight, the zones a VM goes to, one-line errors
# naming the fix, describe-or-create for any resource, and IAM bindings that survive concurrent
# policy changes.
# Each validate_* function dies with one line naming the problem and the fix; its optional
# second argument names where the value came from (`config_origin NAME`, or a flag).
# Source it after lib/common.sh and lib/flags.sh (it uses `die`, `log`, `need_cmd`, `quote_cmd`,
# `q`, `config_origin` and `to_int`).

# _from ORIGIN: " (ORIGIN)" for an error line, or nothing.
_from() { printf '%s' "${1:+ ($1)}"; }

validate_location() {
  local loc=$1
  [[ $loc =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] &&
    die "invalid location $(q "$loc")$(_from "${2:-}"): that is a zone; use its region, e.g. --location ${loc%-*}"
  [[ $loc =~ ^([a-z]+-[a-z]+[0-9]+|us|europe|asia)$ ]] ||
    die "invalid location $(q "$loc")$(_from "${2:-}"): use a region like us-east4" \
      "or a multi-region (us, europe, asia)"
}

validate_repo() {
  [[ $1 =~ ^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$ ]] ||
    die "invalid repository name $(q "$1")$(_from "${2:-}"): use 1-63 lowercase letters, digits and hyphens," \
      "starting with a letter and not ending with a hyphen"
}

validate_image() {
  local part='[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*'
  [[ $1 =~ ^$part(/$part)*$ && ${#1} -le 255 ]] ||
    die "invalid image name $(q "$1")$(_from "${2:-}"): use lowercase letters and digits," \
      "separated by '.', '_', '__' or '-' (and '/')"
}

validate_tag() {
  [[ $1 =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] ||
    die "invalid tag $(q "$1")$(_from "${2:-}"): use up to 128 letters, digits, '_', '.' and '-'," \
      "not starting with '.' or '-'"
}

validate_project() {
  local p=$1
  [[ $p == *:* ]] &&
    die "invalid project id $(q "$p")$(_from "${2:-}"): domain-scoped projects are not supported;" \
      "use a project whose id has no ':'"
  [[ $p =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
    die "invalid project id $(q "$p")$(_from "${2:-}"): use 6-30 lowercase letters, digits and hyphens," \
      "starting with a letter and not ending with a hyphen (the project ID, not its name or number)"
}

validate_registry_host() {
  [[ $1 =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$ ]] ||
    die "invalid registry host $(q "$1")$(_from "${2:-}"): use a host name with an optional :port," \
      "e.g. us-east4-docker.pkg.dev"
}

validate_zone() {
  [[ $1 =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] ||
    die "invalid zone $(q "$1")$(_from "${2:-}"): use a zone like us-east4-a (region plus a letter)"
}

validate_vm_name() {
  [[ $1 =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "invalid VM name $(q "$1")$(_from "${2:-}"): use 1-63 lowercase letters, digits and hyphens," \
      "starting with a letter and not ending with a hyphen"
}

# gcp_preflight: gcloud is installed and authenticated, or one line saying how to fix it.
gcp_preflight() {
  local hint="preflight: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
  need_cmd gcloud "$hint or run this in Cloud Shell"
  gcloud auth print-access-token --quiet >/dev/null 2>&1 ||
    die "preflight: gcloud is not authenticated; run: gcloud auth login (Cloud Shell: authorize when asked)"
}

# gcp_zones: the zones a VM may go to exist (one zones.list, read-only), and ZONES becomes the order
# to try them in: ZONES as the caller filled it (create_instance.sh's --zones), or, when empty, ZONE
# then the other zones of its region alphabetically. The default ZONE (config_origin "the default
# ZONE": LOCATION-a, a placeholder) becomes the region's first zone, since not every region has a
# zone -a (us-east1's are b, c, d); a LOCATION without zones (a typo) is one line naming LOCATION,
# an unknown zone one line naming it and how to list zones. Reads PROJECT and LOCATION; sets ZONE
# and the array ZONES (the caller declares it).
gcp_zones() {
  local out zone origin region=${ZONE%-*} given=${#ZONES[@]}
  local -a all region_zones
  out=$(gcloud compute zones list --project "$PROJECT" --format 'value(name)' 2>&1) ||
    gcp_fail "preflight: cannot list the zones of $PROJECT" "$out" compute.googleapis.com "roles/compute.viewer"
  mapfile -t all < <(grep -E '^[a-z]+-[a-z]+[0-9]+-[a-z]$' <<<"$out" | sort)
  mapfile -t region_zones < <(printf '%s\n' "${all[@]}" | grep -E "^$region-[a-z]\$" || true)
  origin=$(config_origin ZONE)
  if [[ $origin == "the default ZONE" ]]; then
    ((${#region_zones[@]})) ||
      die "LOCATION $(q "$LOCATION") ($(config_origin LOCATION)) is not a Compute Engine region: it has no zones;" \
        "pick a region from: gcloud compute regions list"
    ZONE=${region_zones[0]}
  fi
  ((given)) || ZONES=("$ZONE")
  for zone in "${ZONES[@]}"; do
    printf '%s\n' "${all[@]}" | grep -qFx "$zone" ||
      die "unknown zone $(q "$zone") ($origin); pick one from: gcloud compute zones list --filter region:${zone%-*}"
  done
  ((given)) || mapfile -t -O 1 ZONES < <(printf '%s\n' "${region_zones[@]}" | grep -vFx "$ZONE")
  return 0
}

# Google's answers, recognised in gcloud's output. SERVICE_DISABLED: 403 for an API not enabled
# (cloud.google.com/service-usage/docs/troubleshoot); IAM_PERMISSION_DENIED: 403 without the
# permission; ABORTED / 409 on setIamPolicy: the etag is stale (cloud.google.com/iam/docs/
# policies#etag); Cloud Storage says the same with 412 conditionNotMet, or 409, on a bucket's
# policy (storage/docs/json_api/v1/status-codes); ALREADY_EXISTS: 409 from a create (Storage says
# "you already own it"). GCP_UNKNOWN_MEMBER_RE: 400 INVALID_ARGUMENT for a policy naming a service
# account IAM does not know yet (cloud.google.com/iam/docs/service-accounts-create: a new account
# can take 60 s or more); the code first, the message ("does not exist") as a fallback.
readonly GCP_DISABLED_RE='SERVICE_DISABLED|has not been used in project|is disabled|not enabled'
readonly GCP_DENIED_RE='PERMISSION_DENIED|Permission .* denied|does not have .* access|HTTPError 403'
readonly GCP_ABORTED_RE='ABORTED|concurrent policy changes|subject of a conflict|HTTPError 412|HTTPError 409|conditionNotMet'
readonly GCP_UNKNOWN_MEMBER_RE='INVALID_ARGUMENT|HTTPError 400|[Ss]ervice account .* does not exist'
readonly GCP_NOT_FOUND_RE='NOT_FOUND|was not found|[Nn]ot found|does not exist|HTTPError 404'
readonly GCP_EXISTS_RE='ALREADY_EXISTS|already exists|already own it'

# gcp_fix OUT API ROLE: how to fix gcloud's failure OUT, to end an error line: enable API, ask
# for ROLE, run again later (a policy changed meanwhile), or see the whole answer.
gcp_fix() {
  if grep -qE "$GCP_DISABLED_RE" <<<"$1"; then
    printf 'enable the API: gcloud services enable %s --project %s\n' "$2" "$PROJECT"
  elif grep -qE "$GCP_DENIED_RE" <<<"$1"; then
    printf 'ask a project owner for %s\n' "$3"
  elif grep -qE "$GCP_ABORTED_RE" <<<"$1"; then
    printf 'someone else keeps changing this policy: run the script again in a minute\n'
  else
    printf 'run again with HFGPU_DEBUG=1 to see the gcloud command and its whole answer\n'
  fi
}

# gcp_fail WHAT OUT API ROLE: die with "WHAT: gcloud's error; the fix" on one line.
gcp_fail() {
  die "$1: $(gcloud_error "$2"); $(gcp_fix "$2" "$3" "$4")"
}

# gcp_describe_or_create STEP WHAT API ROLE [MISSING_FIX]: run the command in the array
# GCP_DESCRIBE; when it answers "not found", run the one in GCP_CREATE (when GCP_CREATE is
# empty, a missing resource is an error ending in MISSING_FIX). Sets GCP_STATE (exists, created
# or dry-run) and GCP_OUT (the last command's output). STEP prefixes the log and error lines,
# WHAT names the resource ("gpu-transformers in us-east4"); API and ROLE name the fix when
# Google refuses (gcp_fix). A create answering ALREADY_EXISTS (someone created it meanwhile)
# counts as exists. Under DRY_RUN=1 it prints both commands and runs neither.
gcp_describe_or_create() {
  local step=$1 what=$2 api=$3 role=$4 missing=${5:-}
  GCP_STATE='' GCP_OUT=''
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "${GCP_DESCRIBE[@]}"
    if ((${#GCP_CREATE[@]})); then
      printf '# only when the describe above answers NOT_FOUND:\n'
      quote_cmd "${GCP_CREATE[@]}"
    fi
    GCP_STATE=dry-run
    return 0
  fi
  log "$step: checking $what"
  if GCP_OUT=$("${GCP_DESCRIBE[@]}" 2>&1); then
    GCP_STATE=exists
    return 0
  fi
  if grep -qE "$GCP_DISABLED_RE|$GCP_DENIED_RE" <<<"$GCP_OUT" || ! grep -qE "$GCP_NOT_FOUND_RE" <<<"$GCP_OUT"; then
    gcp_fail "$step: cannot read $what" "$GCP_OUT" "$api" "$role"
  fi
  ((${#GCP_CREATE[@]})) || die "$step: $what was not found; $missing"
  log "$step: $what not found; creating it"
  if GCP_OUT=$("${GCP_CREATE[@]}" 2>&1); then
    GCP_STATE=created
  elif grep -qE "$GCP_EXISTS_RE" <<<"$GCP_OUT"; then
    log "$step: $what was created meanwhile; using it"
    GCP_STATE=exists
    # GCP_OUT is what the describe says, as when the resource was there from the start.
    GCP_OUT=$("${GCP_DESCRIBE[@]}" 2>&1) || gcp_fail "$step: cannot read $what" "$GCP_OUT" "$api" "$role"
  else
    gcp_fail "$step: creating $what failed" "$GCP_OUT" "$api" "$role"
  fi
}

# gcp_ensure_binding WHAT MEMBER ROLE API ADMIN: MEMBER holds ROLE on the resource WHAT, read and
# changed by "${GCP_IAM[@]}" get-iam-policy / add-iam-policy-binding "${GCP_IAM_TARGET[@]}"
# (e.g. GCP_IAM=(gcloud projects) GCP_IAM_TARGET=(my-project)). Reads the policy first and
# changes it only when the binding is missing. Google's eventual consistency is waited out:
# - a policy changed meanwhile (ABORTED, 409 or 412: stale etag) is read and written again, 3 times;
# - a service account IAM does not know yet (400 INVALID_ARGUMENT, e.g. one created a moment ago) is
#   retried with exponential backoff (1 s, 2 s, 4 s ... at most 30 s apart), HFGPU_IAM_WAIT_SECONDS
#   (default 120) in all, as Google advises; the log says how long it waited.
# ADMIN is the role that lets the caller change the policy (named in the error line).
gcp_ensure_binding() {
  local what=$1 member=$2 role=$3 api=$4 admin=$5 out
  local aborted=0 waited=0 delay=1 limit=${HFGPU_IAM_WAIT_SECONDS:-120}
  local add=("${GCP_IAM[@]}" add-iam-policy-binding "${GCP_IAM_TARGET[@]}" --member "$member" --role "$role"
    --format none)
  [[ ${GCP_IAM[1]} == projects ]] && add+=(--condition None)
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "${add[@]}"
    return 0
  fi
  to_int limit HFGPU_IAM_WAIT_SECONDS "$limit" 0 3600
  if ! out=$("${GCP_IAM[@]}" get-iam-policy "${GCP_IAM_TARGET[@]}" --flatten 'bindings[].members' \
    --format 'value(bindings.role,bindings.members)' 2>&1); then
    gcp_fail "roles: cannot read the IAM policy of $what" "$out" "$api" "$admin"
  fi
  if grep -qFx "$role"$'\t'"$member" <<<"$out"; then
    log "roles: $member has $role on $what"
    return 0
  fi
  log "roles: granting $role on $what to $member"
  while ! out=$("${add[@]}" 2>&1); do
    if grep -qE "$GCP_ABORTED_RE" <<<"$out" && ((++aborted < 3)); then
      log "roles: the policy of $what changed meanwhile (attempt $aborted); reading it again"
      sleep "$aborted"
    elif [[ $member == serviceAccount:* ]] && grep -qE "$GCP_UNKNOWN_MEMBER_RE" <<<"$out" && ((waited < limit)); then
      ((delay <= limit - waited)) || delay=$((limit - waited))
      log "roles: IAM does not know ${member#serviceAccount:} yet (a new service account can take a minute" \
        "or more); waiting ${delay}s"
      sleep "$delay"
      waited=$((waited + delay)) delay=$((delay * 2 > 30 ? 30 : delay * 2))
    else
      local fix
      fix=$(gcp_fix "$out" "$api" "$admin")
      if [[ $member == serviceAccount:* ]] && grep -qE "$GCP_UNKNOWN_MEMBER_RE" <<<"$out"; then
        fix="waited ${waited}s for IAM to know ${member#serviceAccount:}; run the script again in a few minutes"
        fix+=" (HFGPU_IAM_WAIT_SECONDS=$limit)"
      fi
      die "roles: granting $role on $what failed: $(gcloud_error "$out"); $fix"
    fi
  done
  ((waited == 0)) || log "roles: granted $role on $what after waiting ${waited}s for IAM to know the new service account"
  return 0
}

# gcloud_error TEXT: gcloud's error from its output, as one line. gcloud prints an operation's
# error as YAML ("Could not fetch resource:" / "---" / "code: X" / "message: ..." wrapped over
# indented lines, perhaps "errorDetails:" after it); that becomes "X: message". The line
# add-iam-policy-binding puts first ("Policy modification failed. For a binding with condition ...",
# whatever the cause) is dropped. A google.rpc
# Status's details ("- '@type': ...ErrorInfo") and a quota's tab-indented details are cut. The note on
# the access-token file and the "ERROR: (gcloud.command)" prefix are dropped. Without an
# ERROR line: the last line.
gcloud_error() {
  local err
  err=$(sed -n '/^ERROR:/,$p' <<<"$1" | sed -E \
    -e '/^ERROR: Policy modification failed\./d' \
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
