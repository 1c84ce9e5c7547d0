"""GPU training throughput and model FLOPs utilization (MFU) of the training programs' setups.

MFU = model FLOPs per token x tokens/s / the GPU's specified dense BF16 (or FP16) peak.
- Peak: the datasheet figure for the GPU, from SPEC_PEAKS below (each row cites its source),
  as every published MFU does (PaLM appendix B, Megatron-LM, llm-foundry, nanoGPT, llm.c).
  A timed 8192^3 bf16 matmul is reported beside it (peak_tflops_measured) as a second column.
- FLOPs: CONVENTION below (PaLM appendix B / Megatron-LM): 6 x the weights of the matrix
  multiplies a token goes through (embedding lookups are not matmuls; GPT-2's tied LM head is
  one and counts), plus 12 x layers x hidden x seq for attention. BERT's pooler and classifier
  run once per sequence: their 6 x weights are spread over the sequence's tokens.
- Tokens: real (non-padding) tokens. On the real data path the model FLOPs of each batch are
  summed from its sequences' own lengths, so padding counts as waste, not as work.

Each configuration runs in a fresh Python process on one GPU (CUDA_VISIBLE_DEVICES = the first),
so TF32 and every other global setting start from PyTorch's defaults, and Trainer never wraps
the model in DataParallel. The timed window is at least --seconds (default 20) after warm-up.
Setups, each on the programs' real data path (variable lengths, DataCollatorWithPadding,
group_by_length for BERT; packed blocks and default_data_collator for GPT-2):
  plain fp32   TrainingArguments' defaults: fp32, TF32 off, batch 8
  before       the earlier trainkit defaults: bf16/fp16, TF32, fused AdamW, workers, batch 8,
               the nan/inf loss filter (a host sync per step), GPT-2's gelu_new, an all-ones mask
  trainkit     today's defaults: the above without the sync, gelu_pytorch_tanh, no mask, and the
               programs' GPU batch (BERT 32, distilgpt2 16)
  compiled     trainkit + --torch_compile True (BERT padded to multiples of 64)
and "trainkit" once more on synthetic full-length batches without padding: the upper bound.

Run (inside the image, on a GPU machine):
  docker run --rm --gpus all -v "$PWD/bench:/bench:ro" -v "$PWD/volume:/volume" gpu_transformers:dev \\
      python3 /bench/gpu_throughput.py --json /volume/bench-gpu.json --markdown /volume/bench-gpu.md
--plan prints FLOPs per token and the spec peaks for the full-size models (no GPU, no Hub).
--tiny runs tiny models for a few seconds each on CPU or GPU: the CI smoke test, and on CPU the
per-step host overhead of each setup (steps/s side by side). Each row runs in a fresh process;
--share-process runs the rows of a workload in one (the CI smoke test: torch imported once each).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent.parent / "app"))  # trainkit, outside the image

CONVENTION = (
    "model FLOPs per token = 6 x matmul weights per token (LM head included when it is a matmul; "
    "per-sequence heads / seq) + 12 x layers x hidden x seq (attention); PaLM (Chowdhery et al. 2022) "
    "appendix B, Megatron-LM (Narayanan et al. 2021) section 5.1"
)

# Dense (no 2:4 sparsity) BF16 tensor-core peak in TFLOP/s, FP16 where the GPU has no BF16.
# NVIDIA's datasheets print the sparse figure for Hopper, Ada and Blackwell: halved here.
# Order matters: the first pattern found in torch.cuda.get_device_name() wins.
# The GPUs Google Cloud rents: https://cloud.google.com/compute/docs/gpus
SPEC_PEAKS: list[tuple[str, str, float, str]] = [
    (
        "GB200",
        "NVIDIA GB200 (A4X)",
        2500.0,
        "https://www.nvidia.com/en-us/data-center/gb200-nvl72/ (5 PF sparse)",
    ),
    (
        "B200",
        "NVIDIA B200 (A4)",
        2250.0,
        "https://www.nvidia.com/en-us/data-center/hgx/ (HGX B200: 4.5 PF sparse)",
    ),
    ("H200 NVL", "NVIDIA H200 NVL", 835.5, "https://www.nvidia.com/en-us/data-center/h200/ (1,671 sparse)"),
    (
        "H200",
        "NVIDIA H200 SXM (A3 Ultra)",
        989.5,
        "https://www.nvidia.com/en-us/data-center/h200/ (1,979 sparse)",
    ),
    ("H100 PCIe", "NVIDIA H100 PCIe", 756.0, "https://www.nvidia.com/en-us/data-center/h100/ (1,513 sparse)"),
    ("H100 NVL", "NVIDIA H100 NVL", 835.0, "https://www.nvidia.com/en-us/data-center/h100/ (1,671 sparse)"),
    ("H100", "NVIDIA H100 SXM (A3)", 989.5, "https://www.nvidia.com/en-us/data-center/h100/ (1,979 sparse)"),
    (
        "A100",
        "NVIDIA A100 40GB/80GB (A2)",
        312.0,
        "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
        "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf (BF16 312)",
    ),
    ("L4", "NVIDIA L4 (G2)", 121.0, "https://www.nvidia.com/en-us/data-center/l4/ (BF16 242 sparse)"),
    (
        "V100",
        "NVIDIA V100 SXM2 (FP16, no BF16)",
        125.0,
        "https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf",
    ),
    (
        "T4",
        "NVIDIA T4 (FP16, no BF16)",
        65.0,
        "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf",
    ),
    (
        "P100",
        "NVIDIA P100 PCIe (FP16, no tensor cores)",
        18.7,
        "https://images.nvidia.com/content/tesla/pdf/nvidia-tesla-p100-PCIe-datasheet.pdf",
    ),
]

# Review lengths for the BERT data path: log-normal, median 230 tokens, sigma 0.75, an assumption
# standing in for movie reviews (no dataset can be downloaded here); cut at the workload's seq.
# The tiny workloads scale the median to a quarter of their seq (group_by_length starts each
# megabatch with its longest examples: too many at seq would leave a short window unpadded).
LENGTH_MEDIAN, LENGTH_SIGMA = 230, 0.75


def spec_peak(device_name: str) -> dict | None:
    """The SPEC_PEAKS row for a torch.cuda.get_device_name() (e.g. "NVIDIA H100 80GB HBM3")."""
    for pattern, name, tflops, source in SPEC_PEAKS:
        if re.search(rf"(?<![\w]){re.escape(pattern)}(?![\w])", device_name, re.IGNORECASE):
            return {"gpu": name, "peak_tflops_spec": tflops, "source": source}
    return None


# ---------------------------------------------------------------- workloads and FLOPs


def workloads(tiny: bool) -> list[dict]:
    """name, kind (bert|gpt2), seq, config overrides."""
    if tiny:
        bert = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
        bert.update(vocab_size=1000, max_position_embeddings=64)
        gpt = {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 64, "vocab_size": 1000}
        return [
            {"name": "tiny-bert seq 64", "kind": "bert", "seq": 64, "config": bert},
            {"name": "tiny-gpt2 block 64", "kind": "gpt2", "seq": 64, "config": gpt},
        ]
    return [
        {"name": "bert-base seq 128", "kind": "bert", "seq": 128, "config": {}},
        {"name": "bert-base seq 512", "kind": "bert", "seq": 512, "config": {}},
        {"name": "distilgpt2 block 1024", "kind": "gpt2", "seq": 1024, "config": {"n_layer": 6}},
    ]


def make_config(work: dict, fast_gelu: bool = True):
    """BertConfig() is bert-base-uncased's; GPT2Config(n_layer=6) is distilgpt2's. No Hub."""
    from transformers import BertConfig, GPT2Config

    if work["kind"] == "bert":
        return BertConfig(**work["config"])
    return GPT2Config(activation_function="gelu_pytorch_tanh" if fast_gelu else "gelu_new", **work["config"])


def model_class(kind: str):
    from transformers import BertForSequenceClassification, GPT2LMHeadModel

    return BertForSequenceClassification if kind == "bert" else GPT2LMHeadModel


PER_SEQUENCE = ("bert.pooler", "classifier")  # modules applied to one position per sequence


def matmul_weights(model) -> tuple[int, int, int, int]:
    """(per-token matmul weights, per-sequence matmul weights, layers, hidden) of MODEL.

    Walks the modules: nn.Linear and GPT-2's Conv1D are matrix multiplies; embeddings,
    norms and biases are not counted.
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    per_token = per_seq = 0
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            if any(name == head or name.startswith(head + ".") for head in PER_SEQUENCE):
                per_seq += module.weight.numel()
            else:
                per_token += module.weight.numel()
    cfg = model.config
    return per_token, per_seq, cfg.num_hidden_layers, cfg.hidden_size


def flops_per_token(weights: tuple[int, int, int, int], seq: float) -> float:
    per_token, per_seq, layers, hidden = weights
    return 6 * per_token + 6 * per_seq / seq + 12 * layers * hidden * seq


def meta_model(work: dict):
    import torch

    with torch.device("meta"):
        return model_class(work["kind"])(make_config(work))


def plan(tiny: bool) -> dict:
    rows = []
    for work in workloads(tiny):
        weights = matmul_weights(meta_model(work))
        rows.append(
            {
                "workload": work["name"],
                "seq": work["seq"],
                "matmul_weights_per_token": weights[0],
                "matmul_weights_per_sequence": weights[1],
                "layers": weights[2],
                "hidden": weights[3],
                "flops_per_token": flops_per_token(weights, work["seq"]),
            }
        )
    peaks = [{"match": p, "gpu": n, "peak_tflops_spec": t, "source": s} for p, n, t, s in SPEC_PEAKS]
    return {"convention": CONVENTION, "workloads": rows, "spec_peaks": peaks}


def padding_fractions(batches=(8, 32), seqs=(128, 256, 512), n: int = 4096) -> list[dict]:
    """Padding share of BERT batches on the real data path (collator, pad to 8), by sampler."""
    import torch
    from transformers import DataCollatorWithPadding
    from transformers.trainer_pt_utils import LengthGroupedSampler

    tok = pad_tokenizer()
    rows = []
    for seq in seqs:
        lengths = review_lengths(n, seq, seed=0)
        for batch in batches:
            for grouped in (False, True):
                g = torch.Generator().manual_seed(0)
                if grouped:
                    order = list(LengthGroupedSampler(batch, lengths=lengths, generator=g))
                else:
                    order = torch.randperm(n, generator=g).tolist()
                collate = DataCollatorWithPadding(tok, pad_to_multiple_of=8)
                real = padded = 0
                for i in range(0, n - batch + 1, batch):
                    feats = [{"input_ids": [5] * lengths[j]} for j in order[i : i + batch]]
                    ids = collate(feats)["input_ids"]
                    real += sum(lengths[j] for j in order[i : i + batch])
                    padded += ids.numel()
                rows.append(
                    {
                        "seq": seq,
                        "batch": batch,
                        "group_by_length": grouped,
                        "padding_fraction": 1 - real / padded,
                    }
                )
    return rows


def review_lengths(n: int, seq: int, seed: int, median: float = LENGTH_MEDIAN) -> list[int]:
    import random

    rng = random.Random(seed)
    return [max(8, min(seq, int(rng.lognormvariate(math.log(median), LENGTH_SIGMA)))) for _ in range(n)]


def pad_tokenizer():
    """A tokenizer that can pad (the collator needs pad_token_id); its vocabulary is never used."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


# ---------------------------------------------------------------- one configuration (a child process)


def setups(tiny: bool) -> list[tuple[str, str]]:
    """(setup, data) pairs, in run order."""
    runs = [("plain fp32", "real"), ("before", "real"), ("trainkit", "real"), ("trainkit", "synthetic")]
    return runs if tiny else [*runs, ("compiled", "real")]


def run_one(spec: dict) -> dict:
    """Train one configuration for the timed window; return its row."""
    import torch
    import trainkit
    from torch.utils.data import Dataset
    from transformers import (
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    work, setup, data, tiny = spec["work"], spec["setup"], spec["data"], spec["tiny"]
    seq, bert = work["seq"], work["kind"] == "bert"
    gpu = torch.cuda.is_available()
    compiled = setup == "compiled"
    fast = setup in ("trainkit", "compiled")
    extra: dict = {}
    if setup != "plain fp32":
        extra = trainkit.speed_defaults()
        extra.pop("use_cpu", None)
        if setup == "before":
            extra["logging_nan_inf_filter"] = True
    else:
        extra = {"tf32": False} if gpu else {}
    batch = 8
    if fast and not tiny:
        batch = 32 if bert else 16  # the programs' GPU defaults
    torch.manual_seed(0)
    config = make_config(work, fast_gelu=fast)
    model = model_class(work["kind"])._from_config(config, attn_implementation="sdpa")
    weights = matmul_weights(model)
    n = 4096
    real = data == "real"
    median = seq / 4 if tiny else LENGTH_MEDIAN
    lengths = review_lengths(n, seq, seed=1, median=median) if (bert and real) else [seq] * n
    mask = not (fast and not bert) if real else False  # packed GPT-2 blocks: all-ones mask "before" only

    class Examples(Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            ids = torch.randint(5, config.vocab_size, (lengths[i],), generator=g).tolist()
            item = {"input_ids": ids, "labels": i % 2 if bert else ids}
            if mask:
                item["attention_mask"] = [1] * len(ids)
            return item

    if bert and real:
        collator = DataCollatorWithPadding(pad_tokenizer(), pad_to_multiple_of=64 if compiled else 8)
    else:
        collator = default_data_collator
    counted = {"on": False, "tokens": 0.0, "flops": 0.0, "padded": 0}

    class Counting(Trainer):
        """Trainer that adds up each timed batch's real tokens and model FLOPs, on the device
        (no host sync) and outside the model (nothing for torch.compile to trace)."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            if counted["on"]:
                ids, am = inputs["input_ids"], inputs.get("attention_mask")
                if am is not None:
                    lens = am.sum(dim=1).double()
                else:
                    lens = torch.full(
                        (ids.shape[0],), float(ids.shape[1]), device=ids.device, dtype=torch.float64
                    )
                per_token, per_seq, layers, hidden = weights
                flops = (
                    6 * per_token * lens.sum()
                    + 6 * per_seq * lens.numel()
                    + 12 * layers * hidden * (lens**2).sum()
                )
                counted["tokens"] = counted["tokens"] + lens.sum()
                counted["flops"] = counted["flops"] + flops
                counted["padded"] += ids.numel()  # a shape: no device sync
            return super().training_step(model, inputs, num_items_in_batch)

    warmup = (30 if compiled else 10) if not tiny else 3
    window = spec["seconds"]

    class Timer(TrainerCallback):
        def __init__(self):
            self.start = self.end = None
            self.steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                sync()
                self.start = time.perf_counter()
                counted["on"] = True
            elif self.start is not None and time.perf_counter() - self.start >= window:
                sync()
                self.end = time.perf_counter()
                self.steps = state.global_step - warmup
                control.should_training_stop = True

    timer = Timer()
    args = TrainingArguments(
        output_dir="/tmp/bench-gpu-out",
        per_device_train_batch_size=batch,
        max_steps=10**7,
        save_strategy="no",
        report_to="none",
        logging_steps=10**6,
        disable_tqdm=True,
        train_sampling_strategy="group_by_length" if (bert and real) else "random",
        torch_compile=compiled,
        **extra,
    )
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    Counting(
        model=model, args=args, train_dataset=Examples(), data_collator=collator, callbacks=[timer]
    ).train()
    seconds = timer.end - timer.start
    tokens, flops = float(counted["tokens"]), float(counted["flops"])
    peak = spec_peak(torch.cuda.get_device_name(0)) if gpu else None
    spec_tflops = peak["peak_tflops_spec"] if peak else None
    row = {
        "workload": work["name"],
        "setup": setup,
        "data": data,
        "batch": batch,
        "seq": seq,
        "steps": timer.steps,
        "timed_s": seconds,
        "steps_per_s": timer.steps / seconds,
        "samples_per_s": timer.steps * batch / seconds,
        "tokens_per_s": tokens / seconds,
        "padding_fraction": 1 - tokens / counted["padded"],
        "flops_per_token": flops_per_token(weights, seq),
        "model_tflops_per_s": flops / seconds / 1e12,
        "peak_tflops_spec": spec_tflops,
        "mfu": flops / seconds / 1e12 / spec_tflops if spec_tflops else None,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32),
    }
    if compiled:
        from torch._dynamo.utils import counters

        row["graphs_compiled"] = counters["stats"]["unique_graphs"]
    return row


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measured_peak() -> float | None:
    """TFLOP/s of a timed 8192^3 bf16 matmul (GPU only): the second column beside the spec."""
    import torch

    if not torch.cuda.is_available():
        return None
    n = 8192
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    for _ in range(5):
        a @ b
    sync()
    reps = 100
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


# ---------------------------------------------------------------- the parent


def child(specs: list[dict]) -> list[dict]:
    """Run SPECS one after another in a fresh process; their rows."""
    env = dict(os.environ)
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")  # one GPU: no DataParallel, tokens/s per GPU
    env["CUDA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"].split(",")[0]
    env["TOKENIZERS_PARALLELISM"] = "false"
    if specs[0]["tiny"]:
        # One intra-op thread: on a small, busy CPU, PyTorch's spinning thread pool turned
        # millisecond steps into seconds (seen here: 0.2 vs 21 steps/s for the tiny GPT-2).
        env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, str(HERE), "--run", json.dumps(specs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        names = ", ".join(f"{s['work']['name']} / {s['setup']}" for s in specs)
        raise SystemExit(f"{names} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    spec = report["peak_tflops_spec"]
    lines = [
        f"Device: {report['device']}. Spec peak: {spec if spec else 'unknown'} TFLOP/s dense; "
        f"measured bf16 matmul: {fmt(report['peak_tflops_measured'], '.0f')} TFLOP/s. "
        f"Timed window: {report['seconds']} s per row, after warm-up.",
        "",
        f"FLOPs: {report['convention']}.",
        "",
        "| workload | setup | data | batch | steps/s | tokens/s | padding | model TFLOP/s | MFU (spec) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['workload']} | {r['setup']} | {r['data']} | {r['batch']} | {r['steps_per_s']:.2f} "
            f"| {r['tokens_per_s']:.0f} | {r['padding_fraction']:.1%} | {r['model_tflops_per_s']:.3g} "
            f"| {fmt(r['mfu'], '.1%')} |"
        )
    return "\n".join(lines) + "\n"


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--plan", action="store_true", help="print FLOPs per token and spec peaks; no training"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny models, a few seconds each (CPU works)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="timed window per row (default 20; tiny 2)"
    )
    parser.add_argument(
        "--share-process",
        action="store_true",
        help="run the rows of one workload in one process: torch is imported once per workload, "
        "not once per row (a quicker smoke run; the rows' figures are not measured apart)",
    )
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: configurations, in a child process
    args = parser.parse_args(argv)
    if args.run:
        print(json.dumps([run_one(spec) for spec in json.loads(args.run)]))
        return 0
    if args.plan:
        report = plan(args.tiny)
        report["bert_padding"] = padding_fractions()
        print(json.dumps(report, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        return 0
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print(
            "error: no CUDA GPU visible; run on a GPU machine (--gpus all), or pass --tiny or --plan",
            file=sys.stderr,
        )
        return 2
    seconds = args.seconds or (2.0 if args.tiny else 20.0)
    if not args.tiny and seconds < 20:
        print("error: --seconds must be at least 20 on a GPU (shorter windows mismeasure)", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    peak = spec_peak(device) if torch.cuda.is_available() else None
    rows = []
    for work in workloads(args.tiny):
        specs = [
            {"work": work, "setup": setup, "data": data, "tiny": args.tiny, "seconds": seconds}
            for setup, data in setups(args.tiny)
        ]
        # A fresh process per row (memory, compile caches, a clean measurement); with
        # --share-process the rows of one workload share one (a quicker smoke run).
        batches = [specs] if args.share_process else [[spec] for spec in specs]
        for batch in batches:
            for r in child(batch):
                rows.append(r)
                line = f"{r['workload']:24s} {r['setup']:10s} {r['data']:9s} {r['steps_per_s']:8.2f} steps/s"
                print(line, flush=True)
    report = {
        "device": device,
        "convention": CONVENTION,
        "peak_tflops_spec": peak["peak_tflops_spec"] if peak else None,
        "peak_source": peak["source"] if peak else None,
        "peak_tflops_measured": measured_peak(),
        "seconds": seconds,
        "rows": rows,
    }
    table = markdown(report)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
