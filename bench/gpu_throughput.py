"""GPU training throughput of the programs' defaults against a plain fp32 Trainer.

Measures samples/s, tokens/s, peak memory and model FLOPs utilization (MFU) for
bert-base (seq 128 and 512) and distilgpt2 (block 1024), randomly initialized at full
size, on synthetic tokens, with the Hugging Face Trainer:
  defaults    trainkit.speed_defaults() (bf16 or fp16, TF32, fused AdamW, workers) + SDPA
  plain fp32  TrainingArguments' own defaults: fp32, no TF32, the model's default attention
The peak FLOP/s for MFU is measured first with a timed large bf16 matmul (so it is what
this GPU really reaches, not the datasheet). MFU is given two ways:
  mfu_6n    6 * parameters * tokens/s / peak
  mfu_attn  (6 * parameters + 12 * layers * hidden * seq) * tokens/s / peak (PaLM appendix B)

Run (inside the image, on a GPU machine):
  docker run --rm --gpus all -v "$PWD/bench:/bench:ro" -v "$PWD/volume:/volume" gpu_transformers:dev \\
      python3 /bench/gpu_throughput.py --markdown /volume/bench-gpu.md --json /volume/bench-gpu.json
--tiny runs tiny models for a few steps (CPU works): a smoke test that keeps this script working.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "app"))  # outside the image
import trainkit


@dataclass
class Workload:
    name: str
    seq: int
    batch: int
    causal: bool
    config: object


def workloads(tiny: bool) -> list[Workload]:
    if tiny:
        bert = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
        gpt = GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=128)
        return [
            Workload("tiny-bert seq 32", 32, 8, False, bert),
            Workload("tiny-bert seq 64", 64, 4, False, bert),
            Workload("tiny-gpt2 block 128", 128, 2, True, gpt),
        ]
    return [
        Workload("bert-base seq 128", 128, 64, False, BertConfig()),
        Workload("bert-base seq 512", 512, 16, False, BertConfig()),
        Workload("distilgpt2 block 1024", 1024, 8, True, GPT2Config(n_layer=6)),
    ]


def measured_peak_flops(tiny: bool) -> tuple[float, str]:
    """FLOP/s of a large matmul, timed: the ceiling MFU is measured against."""
    if torch.cuda.is_available():
        n, dtype, device = 8192, torch.bfloat16, "cuda"
    else:
        n, dtype, device = (256 if tiny else 2048), torch.float32, "cpu"
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    sync()
    reps = 5 if tiny else 50
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (
        time.perf_counter() - start
    ), f"{str(dtype).split('.')[-1]} {n}x{n} matmul on {device}"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timer(TrainerCallback):
    """Wall time of the steps after the warm-up ones."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            sync()
            self.start = time.perf_counter()
        elif state.global_step == state.max_steps:
            sync()
            self.end = time.perf_counter()


class Synthetic(torch.utils.data.Dataset):
    def __init__(self, n: int, seq: int, vocab: int, causal: bool):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, seq), generator=g)
        self.labels = self.ids if causal else torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def run(work: Workload, setup: str, steps: int, warmup: int, out_dir: str) -> dict:
    speed = setup == "defaults"
    extra = trainkit.speed_defaults() if speed else {}
    extra.pop("use_cpu", None)
    attn = {"attn_implementation": "sdpa"} if speed else {}
    torch.manual_seed(0)
    model_cls = GPT2LMHeadModel if work.causal else BertForSequenceClassification
    model = model_cls._from_config(work.config, **attn)
    params = sum(p.numel() for p in model.parameters())
    args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=work.batch,
        max_steps=steps,
        save_strategy="no",
        report_to="none",
        logging_steps=10**6,
        disable_tqdm=True,
        **extra,
    )
    data = Synthetic(work.batch * steps, work.seq, work.config.vocab_size, work.causal)
    timer = Timer(warmup)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    Trainer(model=model, args=args, train_dataset=data, callbacks=[timer]).train()
    seconds = timer.end - timer.start
    samples = work.batch * (steps - warmup) / seconds
    tokens = samples * work.seq
    cfg = work.config
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    if torch.cuda.is_available():
        peak_mem = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process max RSS
    return {
        "workload": work.name,
        "setup": setup,
        "batch": work.batch,
        "seq": work.seq,
        "params": params,
        "samples_per_s": samples,
        "tokens_per_s": tokens,
        "peak_mem_gib": peak_mem,
        "flops_per_token_6n": 6 * params,
        "flops_per_token_attn": 6 * params + 12 * layers * hidden * work.seq,
    }


def markdown(rows: list[dict], peak: float, peak_how: str, device: str) -> str:
    lines = [
        f"Device: {device}. Peak: {peak / 1e12:.3g} TFLOP/s measured ({peak_how}).",
        "",
        "| workload | setup | batch | samples/s | tokens/s | peak mem GiB | MFU 6N | MFU attn | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    plain = {r["workload"]: r["samples_per_s"] for r in rows if r["setup"] == "plain fp32"}
    for r in rows:
        speedup = r["samples_per_s"] / plain[r["workload"]] if r["workload"] in plain else float("nan")
        lines.append(
            f"| {r['workload']} | {r['setup']} | {r['batch']} "
            f"| {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} "
            f"| {r['peak_mem_gib']:.2f} | {r['mfu_6n']:.1%} | {r['mfu_attn']:.1%} | {speedup:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="tiny models, a few steps: a smoke test (CPU works)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="measured steps + warm-up (default 40; tiny 6)"
    )
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--markdown", help="write the table here")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("error: no CUDA GPU visible; run on a GPU machine (--gpus all) or pass --tiny", file=sys.stderr)
        return 2
    steps = args.steps or (6 if args.tiny else 40)
    warmup = max(1, steps // 4)
    peak, peak_how = measured_peak_flops(args.tiny)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    rows = []
    for work in workloads(args.tiny):
        for setup in ("defaults", "plain fp32"):
            row = run(work, setup, steps, warmup, "/tmp/bench-gpu-out")
            row["mfu_6n"] = row["flops_per_token_6n"] * row["tokens_per_s"] / peak
            row["mfu_attn"] = row["flops_per_token_attn"] * row["tokens_per_s"] / peak
            rows.append(row)
            print(f"{row['workload']:24s} {setup:10s} {row['samples_per_s']:10.1f} samples/s", flush=True)
    table = markdown(rows, peak, peak_how, device)
    print(table)
    if args.json:
        report = {"device": device, "peak_flops": peak, "peak_how": peak_how, "steps": steps, "rows": rows}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
