"""Train a causal language model (default: distilgpt2 on WikiText-2) on packed token blocks.

This script lives in the volume to show that a new program runs without rebuilding the
image. It imports `trainkit`, which the image provides (/app is on PYTHONPATH); outside
the image, put a copy of app/trainkit.py beside it.

Start it from the host with `./launch_training.sh gpt2 [-- FLAGS...]` (GPUs, or the CPU),
or inside the image with `train /volume/test_training_distillgpt2.py --max_steps 20 --block_size 128`;
`train` runs torchrun with a process per GPU when there are several. docs/training.md has the
equivalent `docker run` commands. Your own text: --train_file corpus.txt [--validation_file
val.txt], or .jsonl/.csv/.parquet files with --text_column NAME. Flags from a file:
train /volume/test_training_distillgpt2.py /volume/gpt2.json.

All TrainingArguments flags are accepted. Defaults that are not Trainer's: training and
evaluation both run (`--do_eval False` turns evaluation off), TensorBoard logging is on, and
output goes to $OUTPUT_ROOT/<model name> (/volume/distilgpt2). A rerun with the same output
folder continues from the newest complete checkpoint; if the run had finished it trains no
further step. SIGTERM: save, then exit 75. On GPU, 16 blocks per device and a save every
15 minutes (--save_every_minutes M, or --save_steps N to count steps). Results:
output_dir/all_results.json (eval_loss, perplexity, ...).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from itertools import chain

import trainkit
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, default_data_collator


@dataclass
class ModelArguments(trainkit.ModelArguments):
    model_name_or_path: str = field(
        default="distilbert/distilgpt2", metadata={"help": "Hub model id or a local folder."}
    )
    fast_gelu: bool = field(
        default=True,
        metadata={"help": "Run GPT-2's gelu_new as gelu_pytorch_tanh: the same function, in one kernel."},
    )


@dataclass
class DataArguments(trainkit.DataArguments):
    dataset_name: str | None = field(default="Salesforce/wikitext", metadata={"help": "Hub dataset id."})
    dataset_config_name: str | None = field(
        default="wikitext-2-raw-v1", metadata={"help": "Hub dataset config."}
    )
    block_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per training example (default: the model's maximum, at most 1024)."},
    )


def main(model_args: ModelArguments, data_args: DataArguments, training_args) -> int:
    trainkit.setup_logging(training_args)
    trainkit.check_output_dir(training_args.output_dir)
    raw = trainkit.load_raw_datasets(data_args, training_args.seed, need_validation=training_args.do_eval)
    for split in raw.values():
        trainkit.require_columns(split, data_args.text_column)
    model_name = model_args.model_name_or_path
    tokenizer = trainkit.from_pretrained(AutoTokenizer, model_args.tokenizer_name or model_name)
    config = trainkit.from_pretrained(AutoConfig, model_name)
    extra = {}
    if model_args.fast_gelu and getattr(config, "activation_function", None) == "gelu_new":
        # gelu_new is the tanh approximation of GELU written as about eight elementwise kernels;
        # PyTorch's gelu(approximate="tanh") is the same formula in one (transformers'
        # activations.py: PytorchGELUTanh). tests/test_training.py checks outputs and loss agree.
        extra["activation_function"] = "gelu_pytorch_tanh"
    model = trainkit.from_pretrained(
        AutoModelForCausalLM, model_name, attn_implementation=model_args.attn_implementation, **extra
    )
    block_size = min(data_args.block_size or 1024, tokenizer.model_max_length)

    def tokenize(batch):
        # No attention_mask: in a packed block every token is real, so the mask would be all ones,
        # and transformers then checks it on every forward pass (masking_utils._ignore_causal_mask_sdpa:
        # `fast_all(padding_mask)`, a GPU-to-host sync) before taking SDPA's causal path anyway.
        return tokenizer(batch[data_args.text_column], return_attention_mask=False)

    def group_texts(batch):
        """Concatenate every text of the batch and cut it into full blocks (the remainder is dropped)."""
        joined = {k: list(chain.from_iterable(batch[k])) for k in batch}
        usable = len(joined["input_ids"]) // block_size * block_size
        blocks = {k: [v[i : i + block_size] for i in range(0, usable, block_size)] for k, v in joined.items()}
        blocks["labels"] = [list(b) for b in blocks["input_ids"]]
        return blocks

    tokenized = trainkit.tokenize_splits(raw, tokenize, training_args, data_args, desc="tokenize")
    with training_args.main_process_first(desc="pack"):
        data = tokenized.map(group_texts, batched=True, num_proc=data_args.preprocessing_num_workers)
    for name, split in data.items():
        if len(split) == 0:
            raise trainkit.UserError(
                f"the {name} text gives no full block of {block_size} tokens; add text or lower --block_size"
            )

    trainer = trainkit.make_trainer(model, training_args, data, tokenizer, default_data_collator)
    return trainkit.train_and_evaluate(
        trainer,
        (model_args, data_args, training_args),
        eval_extras=lambda m: {"perplexity": trainkit.perplexity(m["eval_loss"])},
    )


def parse_args(argv):
    # On a GPU, 16 blocks of 1024 tokens per device (Trainer's default is 8), learning rate
    # unchanged (Trainer's 5e-5): a recipe change for throughput, see docs/gpu-throughput.md.
    return trainkit.parse(
        (ModelArguments, DataArguments), argv, gpu_defaults={"per_device_train_batch_size": 16}
    )


if __name__ == "__main__":
    sys.exit(trainkit.cli(main, parse_args, sys.argv[1:]))
