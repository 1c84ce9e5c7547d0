"""What checkpoint uploads to a bucket (CHECKPOINT_BUCKET) add to a training run, side by side.

The same GPT-2 training run inside the image, with and without CHECKPOINT_BUCKET, alternating
(so background load hits both alike), each on a fresh volume. The bucket is a local Cloud
Storage emulator (gcp-storage-emulator, in memory, on loopback, started by tests/emulator.py as
the tests start it): this measures what the
upload machinery costs the training loop, not a real network. Reported per setting, the
median of N runs: train_runtime (Trainer's, the steps and saves), the container's wall time
(start to exit, the final uploads included), the seconds spent uploading (the uploader's
own log lines) and the size of one checkpoint.

Run (after `make .venv/.ok`; IMAGE built with google-cloud-storage in it):
  .venv/bin/python bench/bucket_upload.py --image hfgpu-bucket:dev --runs 2 \\
      --markdown docs/checkpoints-in-a-bucket.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from emulator import storage_emulator

ROOT = Path(__file__).resolve().parent.parent
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
USER = f"{os.getuid()}:{os.getgid()}" if os.getuid() != 0 else "1234:1234"
BUCKET = "hfgpu-bench"
LINES = [
    "the quick brown fox jumps over the lazy dog .",
    "a stitch in time saves nine .",
    "all is not gold .",
]
# A wider GPT-2 than the tests' tiny one, so that a checkpoint (weights + AdamW state) weighs ~100 MB.
WIDEN = """
import sys
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
src, dst, width, layers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = GPT2Config.from_pretrained(src)
cfg.n_embd, cfg.n_layer, cfg.n_head = width, layers, 8
GPT2LMHeadModel(cfg).save_pretrained(dst)
AutoTokenizer.from_pretrained(src).save_pretrained(dst)
"""
BEGIN, END = "<!-- bench:bucket-upload -->", "<!-- /bench:bucket-upload -->"


@dataclass
class Options:
    image: str
    runs: int
    steps: int
    save_steps: int
    width: int
    layers: int
    markdown: Path | None


def parse(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", required=True, help="the image to run (with google-cloud-storage)")
    p.add_argument("--runs", type=int, default=2, help="runs per setting (default 2)")
    p.add_argument("--steps", type=int, default=40, help="training steps per run (default 40)")
    p.add_argument("--save-steps", type=int, default=10, help="a checkpoint every N steps (default 10)")
    p.add_argument("--width", type=int, default=512, help="GPT-2 hidden size (default 512)")
    p.add_argument("--layers", type=int, default=4, help="GPT-2 layers (default 4)")
    p.add_argument("--markdown", type=Path, help="write the table between the bench markers of this file")
    a = p.parse_args(argv)
    return Options(a.image, a.runs, a.steps, a.save_steps, a.width, a.layers, a.markdown)


def docker(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False)


def make_models(opts: Options, root: Path) -> Path:
    """tiny-gpt2 from tests/assets/make_tiny_models.py, widened to OPTS.width x OPTS.layers."""
    (root / "vocab.txt").write_text("\n".join(LINES) + "\n")
    shutil.copy(ROOT / "tests" / "assets" / "make_tiny_models.py", root)
    root.chmod(0o777)
    base = [
        "run",
        "--rm",
        "--network",
        "none",
        "--user",
        USER,
        "-v",
        f"{root}:/volume",
        "-e",
        "HF_HUB_OFFLINE=1",
    ]
    sizes = [str(opts.width), str(opts.layers)]
    for cmd in (
        ["python3", "/volume/make_tiny_models.py", "/volume/vocab.txt", "/volume/models"],
        ["python3", "-c", WIDEN, "/volume/models/tiny-gpt2", "/volume/models/gpt2-bench", *sizes],
    ):
        proc = docker(*base, opts.image, *cmd)
        if proc.returncode != 0:
            sys.exit(f"bucket_upload: making the model failed:\n{proc.stderr[-2000:]}")
    return root / "models" / "gpt2-bench"


def new_volume(model: Path, root: Path) -> Path:
    vol = Path(tempfile.mkdtemp(prefix="vol-", dir=root))
    (vol / "data").mkdir()
    text = [" ".join(LINES[(i + j) % 3] for j in range(3)) for i in range(400)]
    (vol / "data" / "lm.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in text))
    shutil.copy(ROOT / "volume" / "test_training_distillgpt2.py", vol)
    shutil.copytree(model, vol / "model")
    for path in [vol, *vol.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return vol


def run_once(opts: Options, model: Path, root: Path, env: dict[str, str]) -> dict[str, float]:
    vol = new_volume(model, root)
    args = [
        "run",
        "--rm",
        "--network",
        "host",
        "--user",
        USER,
        "-v",
        f"{vol}:/volume",
        "-e",
        "HF_HUB_OFFLINE=1",
    ]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    train = [
        *("train", "/volume/test_training_distillgpt2.py", "--model_name_or_path=/volume/model"),
        *("--train_file=/volume/data/lm.jsonl", "--block_size=32", "--per_device_train_batch_size=4"),
        f"--max_steps={opts.steps}",
        f"--save_steps={opts.save_steps}",
        *("--do_eval=False", "--report_to=none", "--disable_tqdm=True", "--output_dir=/volume/out"),
    ]
    started = time.monotonic()
    proc = docker(*args, opts.image, *train)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"bucket_upload: the run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    results = json.loads((vol / "out" / "all_results.json").read_text())
    waited = re.findall(r"bucket: training waited ([\d.]+) s", proc.stderr)
    uploads = [
        float(s) for s in re.findall(r"bucket: uploaded checkpoint-\d+ to \S+ in ([\d.]+) s", proc.stderr)
    ]
    ckpt = next((vol / "out").glob("checkpoint-*"))
    size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    shutil.rmtree(vol, ignore_errors=True)
    return {
        "train_runtime": results["train_runtime"],
        "wall": wall,
        "upload": sum(uploads),
        "waited": float(waited[-1]) if waited else 0.0,
        "uploads": len(uploads),
        "checkpoint_mb": size / 1e6,
    }


def table(opts: Options, rows: dict[str, list[dict[str, float]]]) -> str:
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[name])

    saves = opts.steps // opts.save_steps
    size = med("without", "checkpoint_mb")
    lines = [
        f"GPT-2 {opts.width}x{opts.layers} on CPU, {opts.steps} steps, a checkpoint every {opts.save_steps} "
        f"({saves} checkpoints of {size:.0f} MB), {opts.runs} runs each, alternating, "
        f"{os.cpu_count()} cores:",
        "",
        "| run | train_runtime (s) | container wall time (s) | training waited for uploads (s) "
        "| uploading, in the background (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for i in range(opts.runs):
        for name in ("without", "with"):
            r = rows[name][i]
            label = f"{i + 1}, " + ("without a bucket" if name == "without" else "with CHECKPOINT_BUCKET")
            waited = f"{r['waited']:.2f}" if name == "with" else "-"
            upload = f"{r['upload']:.1f}" if name == "with" else "-"
            lines.append(f"| {label} | {r['train_runtime']:.1f} | {r['wall']:.1f} | {waited} | {upload} |")
    alone = [r["train_runtime"] for r in rows["without"]]
    spread = max(alone) - min(alone)
    diff = med("with", "train_runtime") - med("without", "train_runtime")
    lines += [
        "",
        f"What the uploads cost the training loop (median): **{med('with', 'waited'):.2f} s** for {saves} "
        "checkpoints (hard-link snapshots in `on_save` plus the wait for the last upload at the end), "
        f"while uploading took {med('with', 'upload'):.1f} s in the background. The medians of "
        f"train_runtime differ by {diff:+.1f} s (the runs without a bucket differ by {spread:.1f} s among "
        "themselves): whole-run times also move with whatever else the machine runs.",
    ]
    return "\n".join(lines)


def write_markdown(path: Path, text: str, command: str) -> None:
    block = f"{BEGIN}\n{text}\n\nMeasured with:\n\n```\n{command}\n```\n{END}"
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END) :]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(new)


def main(argv: list[str]) -> int:
    opts = parse(argv)
    root = Path(tempfile.mkdtemp(prefix="hfgpu-bench-bucket-"))
    try:
        with storage_emulator(BUCKET) as host:
            return measure(opts, root, host)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(opts: Options, root: Path, host: str) -> int:
    """Run the settings alternately against the emulator at HOST; print (and write) the table."""
    model = make_models(opts, root)
    rows: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    for i in range(opts.runs):
        for name in ("without", "with"):
            env = {}
            if name == "with":
                env = {
                    "STORAGE_EMULATOR_HOST": host,
                    "CHECKPOINT_BUCKET": f"gs://{BUCKET}/{uuid.uuid4().hex[:8]}",
                }
            row = run_once(opts, model, root, env)
            rows[name].append(row)
            print(f"run {i + 1} {name}: " + ", ".join(f"{k}={v:.2f}" for k, v in row.items()), flush=True)
    text = table(opts, rows)
    print(text)
    if opts.markdown:
        command = "\n".join(
            [
                ".venv/bin/python bench/bucket_upload.py --image IMAGE "
                f"--runs {opts.runs} --steps {opts.steps} --save-steps {opts.save_steps} \\",
                f"    --width {opts.width} --layers {opts.layers} --markdown {opts.markdown}",
            ]
        )
        write_markdown(opts.markdown, text, command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
