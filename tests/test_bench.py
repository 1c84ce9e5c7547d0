"""The benchmarks run in CI: bench/gpu_throughput.py's --plan arithmetic and --tiny mode.

--plan's FLOPs per token are checked against figures worked out here by hand from the
published configurations (bert-base-uncased's and distilgpt2's config.json), with the
convention the script states: 6 x matmul weights per token (+ per-sequence heads / seq)
+ 12 x layers x hidden x seq. Nothing is copied from the script. (bench/cpu_throughput.py
compares the container with a host environment, which CI does not have: it has no tiny mode.)
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT, run_in_image

sys.path.insert(0, str(ROOT / "bench"))
import gpu_throughput

BENCH = ["-v", f"{ROOT / 'bench'}:/bench:ro"]


def bert_base_flops_per_token(seq: int) -> float:
    # bert-base-uncased: 12 layers, hidden 768, intermediate 3072; a 2-label classification head.
    layers, d, ff, labels = 12, 768, 3072, 2
    per_layer = 4 * d * d + 2 * d * ff  # Q, K, V, output projections; the two feed-forward matrices
    per_sequence = d * d + d * labels  # pooler dense + classifier, once per sequence ([CLS])
    return 6 * layers * per_layer + 6 * per_sequence / seq + 12 * layers * d * seq


def distilgpt2_flops_per_token(seq: int) -> float:
    # distilgpt2: 6 layers, n_embd 768, n_inner 4 x 768, vocabulary 50257; LM head tied to wte.
    layers, d, vocab = 6, 768, 50257
    per_layer = 4 * d * d + 2 * d * (4 * d)  # c_attn (3 d^2) + c_proj (d^2); c_fc, mlp c_proj
    return 6 * (layers * per_layer + d * vocab) + 12 * layers * d * seq


@pytest.fixture(scope="module")
def plan(image, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("plan")
    out.chmod(0o777)
    proc = run_in_image(
        image.tag,
        *("python3", "/bench/gpu_throughput.py", "--plan", "--json", "/volume/plan.json"),
        volume=out,
        extra=BENCH,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "plan.json").read_text())


def test_plan_flops_per_token_match_the_hand_count(plan):
    rows = {r["workload"]: r for r in plan["workloads"]}
    assert rows["bert-base seq 512"]["flops_per_token"] == pytest.approx(
        bert_base_flops_per_token(512), rel=1e-9
    )
    assert rows["bert-base seq 128"]["flops_per_token"] == pytest.approx(
        bert_base_flops_per_token(128), rel=1e-9
    )
    gpt = rows["distilgpt2 block 1024"]["flops_per_token"]
    assert gpt == pytest.approx(distilgpt2_flops_per_token(1024), rel=1e-9)
    # The configs built without the Hub are the published ones.
    assert (rows["bert-base seq 512"]["layers"], rows["bert-base seq 512"]["hidden"]) == (12, 768)
    assert (rows["distilgpt2 block 1024"]["layers"], rows["distilgpt2 block 1024"]["hidden"]) == (6, 768)
    assert "PaLM" in plan["convention"] and "appendix B" in plan["convention"]


def test_plan_padding_fractions_fall_with_length_grouping(plan):
    for seq in (128, 256, 512):
        for batch in (8, 32):
            by = {
                r["group_by_length"]: r["padding_fraction"]
                for r in plan["bert_padding"]
                if r["seq"] == seq and r["batch"] == batch
            }
            assert 0 <= by[True] < by[False] < 1, (seq, batch, by)


@pytest.mark.parametrize(
    ("device", "tflops"),
    [
        ("NVIDIA H200", 989.5),
        ("NVIDIA H100 80GB HBM3", 989.5),  # SXM
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA A100-SXM4-40GB", 312.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("Tesla T4", 65.0),
        ("Tesla V100-SXM2-16GB", 125.0),
        ("Tesla P100-PCIE-16GB", 18.7),
        ("NVIDIA B200", 2250.0),
    ],
)
def test_spec_peak_by_device_name(device, tflops):
    """Dense BF16 (FP16 where there is no BF16) from the datasheets: sparse figures halved."""
    peak = gpu_throughput.spec_peak(device)
    assert peak is not None and peak["peak_tflops_spec"] == tflops
    assert peak["source"].startswith("https://")


def test_spec_peak_unknown_gpu_is_none():
    assert gpu_throughput.spec_peak("NVIDIA L40S") is None  # not "L4"


def test_tiny_mode_runs_every_setup_on_cpu(image, tmp_path):
    """bench/gpu_throughput.py --tiny inside the image, so the GPU benchmark cannot rot."""
    tmp_path.chmod(0o777)
    proc = run_in_image(
        image.tag,
        *("python3", "/bench/gpu_throughput.py", "--tiny", "--share-process", "--seconds", "1"),
        *("--json", "/volume/gpu.json"),
        volume=tmp_path,
        extra=BENCH,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    rows = report["rows"]
    setups = {(r["workload"], r["setup"], r["data"]) for r in rows}
    assert len(setups) == len(rows) == 8, setups
    for r in rows:
        for key in ("flops_per_token", "peak_tflops_spec", "tokens_per_s", "mfu"):
            assert key in r, (key, r)
        assert r["tokens_per_s"] > 0 and r["steps"] > 0 and r["timed_s"] >= 1, r
        assert r["mfu"] is None and r["peak_tflops_spec"] is None  # CPU: no spec peak
        assert r["tf32"] is False
    bert_real = [r for r in rows if r["workload"].startswith("tiny-bert") and r["data"] == "real"]
    assert all(r["padding_fraction"] > 0 for r in bert_real)
    assert all(r["padding_fraction"] == 0 for r in rows if r["data"] == "synthetic")
    assert "PaLM" in report["convention"]
