"""CPU training throughput of both programs inside the container vs the same code outside it.

Both sides run the very same files (app/test_training_bert_base.py, app/trainkit.py,
volume/test_training_distillgpt2.py) on the same tiny models and data, alternating
container and host runs so that background load hits both alike. Reported: the median
samples/s and tokens/s (input tokens, padding included, / train_runtime) of N runs each.

Setup, once (the host side needs its own Python environment; bench/.venv is gitignored):
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install torch==2.13.0 transformers==5.20.2 datasets==5.2.0 accelerate==1.15.0 \\
      scikit-learn pyyaml
Run:
  .venv/bin/python bench/cpu_throughput.py --image gpu_transformers:dev --runs 3 \\
      --markdown docs/bench-training.md
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
WORDS = ("the", "a", "movie", "film", "plot", "actor", "scene", "story", "was", "is", "and", "it", "this")
LINES = [
    "the quick brown fox jumps over the lazy dog .",
    "a stitch in time saves nine .",
    "all is not gold .",
]

SCRIPTS = {
    "bert (classification)": (
        "app/test_training_bert_base.py",
        [
            "--model_name_or_path={v}/models/tiny-bert",
            "--train_file={v}/data/cls.csv",
            "--text_column=review",
        ],
    ),
    "distilgpt2 (causal LM)": (
        "volume/test_training_distillgpt2.py",
        ["--model_name_or_path={v}/models/tiny-gpt2", "--train_file={v}/data/lm.jsonl", "--block_size=32"],
    ),
}
COMMON = [
    "--max_steps={steps}",
    "--per_device_train_batch_size=16",
    "--do_eval=False",
    "--save_strategy=no",
    "--report_to=none",
    "--include_num_input_tokens_seen=True",
    "--disable_tqdm=True",
    "--output_dir={v}/out/{name}",
]


def prepare(work: Path, host_python: str) -> None:
    """Tiny data and models (made with the host environment's transformers)."""
    rng = random.Random(0)
    (work / "data").mkdir(parents=True, exist_ok=True)
    with (work / "data" / "cls.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "label"])
        for _ in range(2000):
            label = rng.choice(["pos", "neg"])
            words = [*rng.choices(WORDS, k=rng.randint(4, 30)), "great" if label == "pos" else "awful"]
            writer.writerow([" ".join(words), label])
    lines = [" ".join(LINES[(i + j) % 3] for j in range(3)) for i in range(3000)]
    (work / "data" / "lm.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    (work / "data" / "vocab.txt").write_text("\n".join([*WORDS, "great", "awful", *LINES]) + "\n")
    subprocess.run(
        [
            host_python,
            str(ROOT / "tests/assets/make_tiny_models.py"),
            str(work / "data/vocab.txt"),
            str(work / "models"),
        ],
        check=True,
        capture_output=True,
    )
    shutil.copy(ROOT / "volume/test_training_distillgpt2.py", work)


def run_once(where: str, script: str, args: list[str], work: Path, image: str, host_python: str) -> dict:
    name = Path(args[-1].split("=", 1)[1]).name
    if where == "container":
        uid = f"{os.getuid()}:{os.getgid()}"
        path = "/app/" + Path(script).name if script.startswith("app/") else "/volume/" + Path(script).name
        cmd = [DOCKER, "run", "--rm", "--network", "none", "--user", uid, "-e", "HF_HUB_OFFLINE=1"]
        cmd += ["-v", f"{work}:/volume", image, "train", path, *args]
        env = None
    else:
        path = str(ROOT / script)
        cmd = [host_python, path, *[a.replace("/volume", str(work)) for a in args]]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "app"), "HF_HUB_OFFLINE": "1"}
        env.update(HF_HOME=str(work / ".cache-host"), OUTPUT_ROOT=str(work), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{where} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = work / "out" / name
    metrics = json.loads((out / "train_results.json").read_text())
    tokens = json.loads((out / "trainer_state.json").read_text())["num_input_tokens_seen"]
    shutil.rmtree(out)
    return {
        "samples_per_s": metrics["train_samples_per_second"],
        "tokens_per_s": tokens / metrics["train_runtime"],
    }


def versions(python: list[str]) -> str:
    """'python X, torch Y, transformers Z' of the interpreter PYTHON (a command prefix)."""
    code = "import platform as p, torch, transformers as t; "
    code += "print(p.python_version(), torch.__version__, t.__version__)"
    out = subprocess.run([*python, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return f"python {out[0]}, torch {out[1]}, transformers {out[2]}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=os.environ.get("HFGPU_TEST_IMAGE", "gpu_transformers:dev"))
    parser.add_argument("--host-python", default=str(ROOT / "bench/.venv/bin/python"))
    parser.add_argument("--runs", type=int, default=3, help="runs per script and place (median reported)")
    parser.add_argument("--steps", type=int, default=100, help="training steps per run")
    parser.add_argument(
        "--work", default=str(ROOT / "bench/out/cpu"), help="scratch folder (the container's /volume)"
    )
    parser.add_argument("--markdown", help="write the table here")
    args = parser.parse_args(argv)
    if not Path(args.host_python).exists():
        print(
            f"error: {args.host_python} missing; set up bench/.venv (see this file's docstring)",
            file=sys.stderr,
        )
        return 2
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    prepare(work, args.host_python)
    rows = []
    for label, (script, extra) in SCRIPTS.items():
        samples: dict[str, list[dict]] = {"container": [], "host": []}
        for i in range(args.runs):
            for where in ("container", "host"):
                name = f"{Path(script).stem}-{where}-{i}"
                fmt = {"v": "/volume", "steps": args.steps, "name": name}
                run_args = [a.format(**fmt) for a in (*extra, *COMMON)]
                samples[where].append(run_once(where, script, run_args, work, args.image, args.host_python))
                print(
                    f"{label:24s} {where:9s} run {i}: {samples[where][-1]['samples_per_s']:.1f} samples/s",
                    flush=True,
                )
        med = {w: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for w, rs in samples.items()}
        for where in ("container", "host"):
            spread = [r["samples_per_s"] for r in samples[where]]
            rows.append((label, where, med[where], min(spread), max(spread)))
        rows.append(
            (label, "container / host", {k: med["container"][k] / med["host"][k] for k in med["host"]}, 0, 0)
        )
    where = {
        "container": versions([DOCKER, "run", "--rm", args.image, "python3"]),
        "host": versions([args.host_python]),
    }
    table = render(rows, args, where)
    print(table)
    if args.markdown:
        # docs/bench-training.md holds other measurements too: rewrite only this block when it is there.
        sys.path.insert(0, str(ROOT / "bench"))
        from report import update_block

        path = Path(args.markdown)
        if not (path.is_file() and update_block(path, "cpu-container-host", table.split("\n", 1)[1])):
            path.write_text(table)
    return 0


def render(rows, args, where: dict[str, str]) -> str:
    lines = [
        "# CPU training throughput: container vs host",
        "",
        "Made by (and refreshed with):",
        "",
        "```",
        f".venv/bin/python bench/cpu_throughput.py --image {args.image} --runs {args.runs} "
        f"--steps {args.steps} "
        "--markdown docs/bench-training.md",
        "```",
        "",
        f"Machine: {os.cpu_count()} CPU cores, {platform.platform()}. Tiny models (2 layers, hidden 32) from",
        f"tests/assets/make_tiny_models.py, batch 16, {args.steps} steps per run, median of {args.runs} runs",
        "(min-max in brackets), container and host runs alternating.",
        f"Container: image {args.image} ({where['container']}).",
        f"Host: bench/.venv ({where['host']}).",
        "",
        "| program | where | samples/s | tokens/s |",
        "|---|---|---:|---:|",
    ]
    for label, where, med, lo, hi in rows:
        if where == "container / host":
            lines.append(
                f"| {label} | **container / host** "
                f"| **{med['samples_per_s']:.2f}x** | {med['tokens_per_s']:.2f}x |"
            )
        else:
            lines.append(
                f"| {label} | {where} | {med['samples_per_s']:.1f} ({lo:.1f}-{hi:.1f}) "
                f"| {med['tokens_per_s']:.0f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
