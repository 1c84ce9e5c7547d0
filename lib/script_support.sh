# shellcheck shell=bash
# Summary: what launch_training.sh needs to know about a training script it did not write
# (issue 11): whether it saves on a stop, how it resumes, whether it finished, and whether
# its outputs land in the volume. Pure functions over the script's source and arguments
# and the host folder mounted at /volume; nothing here starts a container.
#
# Source after lib/common.sh (uses warn, and PROG for messages). Paths: SCRIPT is the
# container path the launcher runs (/app/NAME.py or /volume/NAME.py); VOLUME is the host
# folder mounted at /volume; ARGS are the script's own arguments (after `--`).
# submit_vertex_job.sh uses script_output_args too: the same output options must be in /gcs there.
#
# How launch_training.sh calls each:
#   1. After parsing, before `docker run`:
#        script_check_output_paths "$mode" "${script_args[@]}" || exit 1
#      mode=refuse by default, mode=warn with the launcher flag --allow-outside-volume.
#      Refuses (one line, exit status 1) an absolute output path outside /volume, e.g.
#      --output_dir /tmp/out or --output_dir=/app/out: lost with the container, or unwritable.
#   2. In the "stop:" hint it prints after starting the container:
#        log "stop:   docker stop NAME ($(script_stop_note "$src" "${script_args[@]}"))"
#      where src=$(script_host_path "$SCRIPT" "$VOLUME") (the source file on the host).
#      Replaces the fixed "(saves a checkpoint)", which held only for our programs.
#   3. When the container has exited with CODE (the run started at epoch START, `date +%s`):
#        if script_run_outcome "$VOLUME" "$CODE" "$START" "${script_args[@]}"; then (finished)
#      It prints one line (say it instead of "finished; outputs in ..."): "finished" only when
#      the run says so (trainer_state.json global_step == max_steps, or all_results.json
#      written by this run, for scripts that write them); exit 0 at step 1355 of 20000 (an HF
#      --enable_jit_checkpoint stop) is "stopped at step 1355 of 20000".
#      For our programs (script_uses_trainkit "$src") the exit status alone is exact: 0 is
#      finished, 75 stopped after a save; the function is for everyone else's scripts.
#   4. With --restart-on-preemption, before each restart (codes 75, 137, 143 as today; not
#      on 0: a script that stops early by itself, e.g. early stopping, exits 0 and is done):
#        script_resume_plan "$src" "$VOLUME" "${script_args[@]}"
#        note "$name exited $CODE; $SCRIPT_RESUME_NOTE ($restarts/$max)"
#        run again with: "${script_args[@]}" "${SCRIPT_RESUME_ARGS[@]}"
#      Always from the ORIGINAL script_args, so --resume_from_checkpoint is not repeated.
#      SCRIPT_RESUME_MODE is "resume" (trainkit programs; HF Trainer scripts that handle
#      --resume_from_checkpoint, given the newest complete checkpoint) or "restart" (the
#      script starts over at step 0: say so, it may overwrite its checkpoints).
#   5. For a script that uses HfArgumentParser, before all of the above (issue 21): the image's
#      app/hf_script_args.py reads the arguments as HfArgumentParser does (a JSON/YAML config file,
#      dash spellings, --flag=value) and `script_facts_read` keeps its KEY=VALUE lines in
#      SCRIPT_FACTS; `script_check_facts MODE` then refuses what the script would lose or stop on.
#      Every function here prefers SCRIPT_FACTS when set, else reads ARGS itself (the fallback).
# `train` in the image makes the exit codes comparable: 75 saved-and-stopped, 143 (130)
# stopped by a signal, with one process and with torchrun alike.

# The container folder the launcher mounts VOLUME on.
readonly SCRIPT_VOLUME_MOUNT=/volume
# trainkit's completion marker (app/trainkit.py COMPLETE_MARKER).
readonly SCRIPT_TRAINKIT_MARKER=checkpoint-complete.json
# HF TrainingArguments' output_dir when none is given (relative: under /volume, the workdir).
readonly SCRIPT_HF_DEFAULT_OUTPUT=trainer_output

SCRIPT_SUPPORT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# What HfArgumentParser makes of the script's arguments, as the image's app/hf_script_args.py
# reads them (script_facts_read); empty when unknown: the functions below then read the
# command line themselves (the cheap fallback, for scripts that are not Trainer scripts).
declare -gA SCRIPT_FACTS=()

# script_facts_read LINES: SCRIPT_FACTS from `hf_script_args.py --format lines` (KEY=VALUE lines).
script_facts_read() {
  local line
  SCRIPT_FACTS=()
  while IFS= read -r line; do
    [[ $line =~ ^[a-z_]+= ]] || continue
    SCRIPT_FACTS[${line%%=*}]=${line#*=}
  done <<<"$1"
  # The helper answered (an empty output_dir, --output_dir=, is the workdir /volume itself).
  [[ -n ${SCRIPT_FACTS[form]:-} && -v SCRIPT_FACTS[output_dir] ]] || SCRIPT_FACTS=()
}

# script_fact NAME ARGS...: the value the script reads for TrainingArguments' NAME: SCRIPT_FACTS
# when known (status 1 when empty: not given), else the last --NAME in ARGS (script_arg_value).
script_fact() {
  local name=$1
  shift
  if ((${#SCRIPT_FACTS[@]})); then
    [[ -n ${SCRIPT_FACTS[$name]:-} ]] || return 1
    printf '%s\n' "${SCRIPT_FACTS[$name]}"
    return 0
  fi
  script_arg_value "$name" "$@"
}

# script_mentions SRC REGEX: the script's source, or one of its own modules beside it that it imports
# (train.py doing `from mylib import run`, with mylib.py or mylib/*.py in its folder: Python finds
# them there), matches REGEX (grep -E). Status 1 when none does.
script_mentions() {
  local src=$1 regex=$2 dir mod
  grep -qE -- "$regex" "$src" 2>/dev/null && return 0
  dir=$(dirname -- "$src")
  while read -r mod; do
    [[ -f $dir/$mod.py ]] && grep -qE -- "$regex" "$dir/$mod.py" && return 0
    [[ -d $dir/$mod ]] && grep -rqE --include='*.py' -- "$regex" "$dir/$mod" && return 0
  done < <(sed -nE 's/^[[:space:]]*(from|import)[[:space:]]+([A-Za-z_][A-Za-z0-9_]*).*/\2/p' "$src" 2>/dev/null | sort -u)
  return 1
}

# script_reads_hf_args SRC: the script reads its arguments with HfArgumentParser/TrainingArguments
# (itself or in its own modules; worth asking the image how), or its source is unknown.
script_reads_hf_args() {
  [[ ! -f $1 ]] || script_mentions "$1" 'HfArgumentParser|TrainingArguments'
}

# script_uses_trainer SRC: the script (or its source unknown) may build a transformers Trainer
# (Trainer, Seq2SeqTrainer, trl's SFTTrainer...), itself or in its own modules: the image's bucket
# hook can mirror its checkpoints.
script_uses_trainer() {
  [[ ! -f $1 ]] || script_mentions "$1" '[A-Za-z0-9_]*Trainer\b'
}

# script_host_path SCRIPT VOLUME: the host file behind container path SCRIPT (/volume/X ->
# VOLUME/X, /app/X -> the repository's app/X). Status 1 when it has none.
script_host_path() {
  local path=$1 volume=$2
  case $path in
    "$SCRIPT_VOLUME_MOUNT"/*) printf '%s\n' "$volume/${path#"$SCRIPT_VOLUME_MOUNT"/}" ;;
    /app/*) printf '%s\n' "$SCRIPT_SUPPORT_ROOT/app/${path#/app/}" ;;
    /*) return 1 ;;
    *) printf '%s\n' "$volume/$path" ;; # relative: the container's workdir is /volume
  esac
}

# script_arg_value NAME ARGS...: the value of the last --NAME VALUE / --NAME=VALUE in ARGS, NAME
# in either spelling HfArgumentParser accepts (--output_dir, --output-dir); empty for a bare --NAME
# (an on/off flag); status 1 when ARGS lack --NAME.
script_arg_value() {
  local name=$1 dashed=${1//_/-} found=1 value='' i
  shift
  local -a args=("$@")
  for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
      "--$name="* | "--$dashed="*) found=0 value=${args[i]#*=} ;;
      "--$name" | "--$dashed")
        found=0 value=''
        if ((i + 1 < ${#args[@]})) && [[ ${args[i + 1]} != --* ]]; then
          value=${args[i + 1]}
          i=$((i + 1))
        fi
        ;;
    esac
  done
  ((found == 0)) || return 1
  printf '%s\n' "$value"
}

# script_flag_on NAME ARGS...: --NAME is given and not false (bare, true, True, 1, yes).
script_flag_on() {
  local value
  value=$(script_fact "$@") || return 1
  [[ ${value,,} == '' || ${value,,} == true || ${value,,} == 1 || ${value,,} == yes ]]
}

# script_uses_trainkit SRC: the script is one of ours (imports trainkit), which saves a
# checkpoint on SIGTERM, exits 75, and resumes from its newest complete checkpoint.
script_uses_trainkit() {
  [[ -f $1 ]] && grep -qE '^[[:space:]]*(import trainkit|from trainkit import)' "$1"
}

# script_handles_resume SRC: the script passes --resume_from_checkpoint on to Trainer
# (HF examples do: trainer.train(resume_from_checkpoint=...)). A script that merely parses
# TrainingArguments accepts the flag and ignores it, so its source must use the name.
script_handles_resume() {
  [[ -f $1 ]] && script_mentions "$1" 'resume_from_checkpoint'
}

# script_stop_note SRC ARGS...: what a `docker stop` does to this run, for the "stop:" hint.
script_stop_note() {
  local src=$1
  shift
  if script_uses_trainkit "$src"; then
    echo "saves a checkpoint first"
  elif script_flag_on enable_jit_checkpoint "$@"; then
    echo "saves a checkpoint first: --enable_jit_checkpoint"
  elif [[ $(script_fact save_strategy "$@" || echo steps) != no ]] && script_handles_resume "$src"; then
    echo "not known to save on a stop: the steps since its last checkpoint are lost;" \
      "add --enable_jit_checkpoint to save first"
  else
    echo "not known to save a checkpoint on a stop: its progress is lost unless it saves by itself"
  fi
}

# script_output_dir VOLUME ARGS...: the host folder behind the script's --output_dir (HF's
# default trainer_output when absent). Status 1 when it is outside the volume.
script_output_dir() {
  local volume=$1 dir
  shift
  if ((${#SCRIPT_FACTS[@]})); then
    dir=${SCRIPT_FACTS[output_dir]}
    # A symlink in the volume that leads out of it: the files land outside (the helper followed it).
    script_in_volume "${SCRIPT_FACTS[output_dir_real]:-/volume}" || return 1
  else
    dir=$(script_arg_value output_dir "$@") || dir=$SCRIPT_HF_DEFAULT_OUTPUT
    [[ -n $dir ]] || return 1
  fi
  dir=$(script_container_path "$dir")
  [[ $dir != "$SCRIPT_VOLUME_MOUNT" ]] || { printf '%s\n' "$volume"; return 0; }
  [[ $dir == "$SCRIPT_VOLUME_MOUNT"/* ]] || return 1
  script_host_path "$dir" "$volume"
}

# script_outputs_where VOLUME ARGS...: where the script's outputs went, for the last line: its
# output folder on this machine, or the container path that was lost with the container.
script_outputs_where() {
  local volume=$1 dir
  shift
  if dir=$(script_output_dir "$volume" "$@"); then
    # A script whose arguments were not read (not a Trainer script) and that named no output folder
    # wrote to no trainer_output unless one is there: its outputs are somewhere in the volume.
    if ((${#SCRIPT_FACTS[@]} == 0)) && [[ ! -e $dir ]] && ! script_arg_value output_dir "$@" >/dev/null; then
      dir=$volume
    fi
    printf '%s\n' "$dir"
  else
    dir=$(script_fact output_dir "$@") || dir=''
    printf '%s\n' "${dir:-an unknown folder} inside the container (outside /volume: lost with it)"
  fi
}

# script_newest_checkpoint DIR: the newest complete checkpoint-N folder in host folder DIR.
# Complete: trainkit's marker when the folder uses markers, else Trainer's trainer_state.json
# (written last in a save). A folder left by a kill mid-save is skipped. Status 1: none.
script_newest_checkpoint() {
  local dir=$1 path step best=-1 best_path='' need=trainer_state.json
  [[ -d $dir ]] || return 1
  compgen -G "$dir/checkpoint-*/$SCRIPT_TRAINKIT_MARKER" >/dev/null && need=$SCRIPT_TRAINKIT_MARKER
  for path in "$dir"/checkpoint-*; do
    step=${path##*/checkpoint-}
    [[ $step =~ ^[0-9]+$ && -f $path/$need ]] || continue
    if ((10#$step > best)); then
      best=$((10#$step)) best_path=$path
    fi
  done
  [[ -n $best_path ]] || return 1
  printf '%s\n' "$best_path"
}

# script_state_steps FILE: "GLOBAL_STEP MAX_STEPS" from a trainer_state.json.
script_state_steps() {
  python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); print(s["global_step"], s["max_steps"])' "$1"
}

# script_run_outcome VOLUME CODE START ARGS...: one line on stdout saying how the run ended;
# status 0 only when it finished. START: when the run began (epoch seconds), so that files
# of an earlier run do not count.
script_run_outcome() {
  local volume=$1 code=$2 start=$3 dir state='' steps step max ckpt
  shift 3
  dir=$(script_output_dir "$volume" "$@") || dir=''
  if [[ -n $dir && -f $dir/trainer_state.json ]] && (($(stat -c %Y "$dir/trainer_state.json") >= start)); then
    state=$dir/trainer_state.json
  elif [[ -n $dir ]] && ckpt=$(script_newest_checkpoint "$dir") && (($(stat -c %Y "$ckpt") >= start)); then
    state=$ckpt/trainer_state.json
  fi
  if [[ -n $state ]] && steps=$(script_state_steps "$state" 2>/dev/null); then
    read -r step max <<<"$steps"
    if ((code == 0 && step >= max)); then
      echo "finished: step $step of $max"
      return 0
    fi
    echo "stopped at step $step of $max (exit $code)"
    return 1
  fi
  if [[ -n $dir && -f $dir/all_results.json ]] && (($(stat -c %Y "$dir/all_results.json") >= start)) &&
    ((code == 0)); then
    echo "finished: it wrote ${dir#"$volume"/}/all_results.json"
    return 0
  fi
  if ((code == 0)); then
    echo "finished (exit 0; it wrote no trainer_state.json to check)"
    return 0
  fi
  echo "ended with exit $code"
  return 1
}

# script_resume_plan SRC VOLUME ARGS...: how a restart of this run will continue. Sets
#   SCRIPT_RESUME_MODE  resume | restart
#   SCRIPT_RESUME_ARGS  arguments to append to ARGS (an array; maybe empty)
#   SCRIPT_RESUME_NOTE  one line to print ("resuming from ...", "starting over ...")
#   SCRIPT_RESUME_CONFIG  for a run from one JSON/YAML config file: the checkpoint (container
#                       path) that a private copy of the config must name in resume_from_checkpoint;
#                       the copy then replaces ARGS (SCRIPT_RESUME_ARGS stays empty)
# With SCRIPT_FACTS known, the flag is spelt as the script's own flags are (--resume-from-checkpoint
# after --output-dir; --flag=value after --flag=value).
# shellcheck disable=SC2034 # SCRIPT_RESUME_MODE and SCRIPT_RESUME_CONFIG are for the caller
script_resume_plan() {
  local src=$1 volume=$2 dir ckpt flag=--resume_from_checkpoint form=${SCRIPT_FACTS[form]:-command-line}
  shift 2
  SCRIPT_RESUME_MODE=restart SCRIPT_RESUME_ARGS=() SCRIPT_RESUME_NOTE='' SCRIPT_RESUME_CONFIG=''
  if script_uses_trainkit "$src"; then
    SCRIPT_RESUME_MODE=resume
    SCRIPT_RESUME_NOTE="starting it again: it resumes from its newest complete checkpoint by itself"
    return 0
  fi
  if ! script_handles_resume "$src"; then
    SCRIPT_RESUME_NOTE="starting it again: ${src##*/} is not known to resume (it does not use"
    SCRIPT_RESUME_NOTE+=" --resume_from_checkpoint), so FROM STEP 0 unless it resumes by itself;"
    SCRIPT_RESUME_NOTE+=" it may overwrite its checkpoints"
    return 0
  fi
  if script_fact resume_from_checkpoint "$@" >/dev/null; then
    SCRIPT_RESUME_MODE=resume
    SCRIPT_RESUME_NOTE="starting it again with the resume_from_checkpoint it was given"
    return 0
  fi
  dir=$(script_output_dir "$volume" "$@") || dir=''
  if [[ -z $dir ]] || ! ckpt=$(script_newest_checkpoint "$dir"); then
    SCRIPT_RESUME_NOTE="starting it again FROM STEP 0: no complete checkpoint in its output folder yet"
    return 0
  fi
  SCRIPT_RESUME_MODE=resume
  ckpt=$SCRIPT_VOLUME_MOUNT/${ckpt#"$volume"/}
  SCRIPT_RESUME_NOTE="starting it again to resume from step ${ckpt##*/checkpoint-}"
  if [[ $form == json || $form == yaml ]]; then
    SCRIPT_RESUME_CONFIG=$ckpt
    SCRIPT_RESUME_NOTE+=" (a copy of ${SCRIPT_FACTS[config]} with resume_from_checkpoint: $ckpt)"
    return 0
  fi
  [[ ${SCRIPT_FACTS[spelling]:-} == dash ]] && flag=--resume-from-checkpoint
  if [[ ${SCRIPT_FACTS[equals]:-} == true ]]; then
    SCRIPT_RESUME_ARGS=("$flag=$ckpt")
  else
    SCRIPT_RESUME_ARGS=("$flag" "$ckpt")
  fi
  SCRIPT_RESUME_NOTE+=" ($flag $ckpt)"
}

# script_in_volume PATH: container path PATH (relative: to the workdir /volume) lies in /volume.
script_in_volume() {
  local norm
  norm=$(script_container_path "$1")
  [[ $norm == "$SCRIPT_VOLUME_MOUNT" || $norm == "$SCRIPT_VOLUME_MOUNT"/* ]]
}

# script_output_option NAME: option names that hold an output path (either spelling): HF's
# (--output_dir, --logging-dir, --save_path...) and trainkit's --model_dir (app/trainkit.py
# RunArguments: where our programs write the final model).
script_output_option() {
  set -- "${1//-/_}"
  [[ $1 == model_dir ]] && return 0
  [[ $1 =~ (^|_)(output|save|logging|log|checkpoint)(_|$) && $1 =~ (dir|path|file|output)$ ]]
}

# The output options script_output_args found, index by index: the name as spelt (output-dir) and
# the path as given.
declare -ga SCRIPT_OUTPUT_NAMES=() SCRIPT_OUTPUT_VALUES=()

# script_output_args ARGS...: the output options (script_output_option) among a script's ARGS,
# --NAME VALUE or --NAME=VALUE, in SCRIPT_OUTPUT_NAMES and SCRIPT_OUTPUT_VALUES, in their order in
# ARGS. Only the LAST occurrence of an option counts, as argparse and HfArgumentParser keep it
# (--output_dir A --output-dir B: B); one with no value (bare, empty, or followed by --X) is left out.
# The one walker for both checks: the launcher's (script_check_output_paths) and Vertex AI's.
script_output_args() {
  local i name value key
  local -a args=("$@")
  local -A last=()
  SCRIPT_OUTPUT_NAMES=() SCRIPT_OUTPUT_VALUES=()
  for ((i = 0; i < ${#args[@]}; i++)); do
    key=${args[i]#--} key=${key%%=*}
    [[ ${args[i]} == --?* && -n $key ]] && last[${key//-/_}]=$i
  done
  for ((i = 0; i < ${#args[@]}; i++)); do
    [[ ${args[i]} == --?* ]] || continue
    name=${args[i]#--} value=''
    if [[ $name == *=* ]]; then
      value=${name#*=} name=${name%%=*}
    elif ((i + 1 < ${#args[@]})); then
      value=${args[i + 1]}
    fi
    key=${name//-/_}
    [[ -n $key && ${last[$key]:-} == "$i" ]] || continue
    script_output_option "$name" || continue
    [[ -n $value && $value != --* ]] || continue
    SCRIPT_OUTPUT_NAMES+=("$name") SCRIPT_OUTPUT_VALUES+=("$value")
  done
  return 0
}

# script_container_path PATH: PATH as the container resolves it (relative to the workdir /volume),
# normalised: ../tmp/out is /tmp/out.
script_container_path() {
  local path=$1
  [[ $path == /* ]] || path=$SCRIPT_VOLUME_MOUNT/$path
  realpath -m -- "$path"
}

# script_check_output_paths MODE ARGS...: an absolute output path outside /volume among ARGS
# (--output_dir /tmp/out, --logging_dir=/app/logs, --model_dir /tmp/m; script_output_args: the last
# of a repeated option): MODE refuse prints one error line and returns 1; MODE warn prints a
# warning and returns 0.
script_check_output_paths() {
  local mode=$1 i name value
  shift
  script_output_args "$@"
  for i in "${!SCRIPT_OUTPUT_NAMES[@]}"; do
    name=${SCRIPT_OUTPUT_NAMES[i]} value=${SCRIPT_OUTPUT_VALUES[i]}
    script_in_volume "$value" && continue
    if [[ $mode == warn ]]; then
      warn "--$name $value is outside $SCRIPT_VOLUME_MOUNT: it is lost with the container"
      continue
    fi
    printf '%s: error: %s\n' "${PROG:-${0##*/}}" "--$name $value is outside $SCRIPT_VOLUME_MOUNT, so it would be lost with \
the container; use a path under $SCRIPT_VOLUME_MOUNT (or a relative one), or pass --allow-outside-volume" >&2
    return 1
  done
  return 0
}

# script_check_facts MODE: what SCRIPT_FACTS says HfArgumentParser reads. A config file the script
# cannot read (missing, a key spelt with dashes) is refused in both modes; an output_dir outside
# /volume (also one inside a JSON/YAML config) is refused (MODE refuse) or warned about (MODE warn).
script_check_facts() {
  local mode=$1 dir real where
  ((${#SCRIPT_FACTS[@]})) || return 0
  if [[ -n ${SCRIPT_FACTS[problem]:-} ]]; then
    if [[ ${SCRIPT_FACTS[form]} == command-line ]]; then
      warn "${SCRIPT_FACTS[problem]}; the script may stop at once"
    else
      printf '%s: error: %s\n' "${PROG:-${0##*/}}" "${SCRIPT_FACTS[problem]}; the script would stop at once" >&2
      return 1
    fi
  fi
  dir=${SCRIPT_FACTS[output_dir]} real=${SCRIPT_FACTS[output_dir_real]:-}
  if script_in_volume "$dir"; then
    [[ -n $real ]] && ! script_in_volume "$real" || return 0
    dir+=" (a symlink to $real)"
  fi
  where="output_dir $dir"
  [[ -z ${SCRIPT_FACTS[config]:-} ]] || where+=" (in ${SCRIPT_FACTS[config]})"
  if [[ $mode == warn ]]; then
    warn "$where is outside $SCRIPT_VOLUME_MOUNT: it is lost with the container"
    return 0
  fi
  printf '%s: error: %s\n' "${PROG:-${0##*/}}" "$where is outside $SCRIPT_VOLUME_MOUNT, so it would be lost with \
the container; use a path under $SCRIPT_VOLUME_MOUNT (or a relative one), or pass --allow-outside-volume" >&2
  return 1
}
