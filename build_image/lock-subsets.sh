#!/usr/bin/env bash
# Summary: split the hash lock into the image's dependency layers, one file per layer.
#
# Usage: lock-subsets LOCK OUTDIR NAME='GLOB...' [NAME='GLOB...' ...]
#
# Writes OUTDIR/NAME.txt for each NAME: the entries of LOCK (pins with their hashes,
# exactly as `uv pip compile --generate-hashes` wrote them) whose package name matches one
# of the GLOBs. A package goes to the FIRST layer that matches it, so a later layer may use
# a broad glob (nvidia-*) for "the rest of them"; what no layer matches is installed by the
# final `uv pip sync` of the whole lock (the last dependency layer). Every GLOB must match
# at least one package, so a renamed package cannot silently move to another layer.
# The Dockerfile runs this in a stage of its own: each install step mounts only its file,
# so a change to the lock rebuilds only the layers whose subset changed (and those above).
set -euo pipefail

main() {
  if [[ $# -lt 3 || $1 == -h || $1 == --help ]]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    [[ $# -ge 1 && ($1 == -h || $1 == --help) ]]
    return
  fi
  local lock=$1 out=$2
  shift 2
  [[ -r $lock ]] || { echo "lock-subsets: cannot read the lock $lock" >&2; return 1; }
  mkdir -p "$out"
  awk -v out="$out" -v specs="$(printf '%s\n' "$@")" '
    function glob_re(g) { gsub(/[.+]/, "\\\\&", g); gsub(/\*/, ".*", g); gsub(/\?/, ".", g); return "^" g "$" }
    BEGIN {
      n = split(specs, lines, "\n")
      for (i = 1; i <= n; i++) {
        if (lines[i] == "") continue
        eq = index(lines[i], "=")
        if (eq < 2) { print "lock-subsets: give NAME=GLOBS, not \"" lines[i] "\"" > "/dev/stderr"; bad = 1; exit 1 }
        name[++layers] = substr(lines[i], 1, eq - 1)
        globs[layers] = substr(lines[i], eq + 1)
        printf "" > (out "/" name[layers] ".txt")
      }
    }
    /^[A-Za-z0-9]/ {
      split($1, pin, "==")
      pkg = tolower(pin[1])
      target = ""
      for (l = 1; l <= layers && target == ""; l++) {
        k = split(globs[l], g, " ")
        for (j = 1; j <= k; j++) {
          if (g[j] != "" && pkg ~ glob_re(tolower(g[j]))) { target = out "/" name[l] ".txt"; used[l, j] = 1; break }
        }
      }
    }
    /^[A-Za-z0-9]/ || /^ +--hash=/ { if (target != "") print > target }
    END {
      if (bad) exit 1
      for (l = 1; l <= layers; l++) {
        k = split(globs[l], g, " ")
        for (j = 1; j <= k; j++) {
          if (g[j] != "" && !used[l, j]) { print "lock-subsets: layer " name[l] ": \"" g[j] "\" matches no locked package" > "/dev/stderr"; bad = 1 }
        }
      }
      exit bad
    }
  ' "$lock"
}

main "$@"
