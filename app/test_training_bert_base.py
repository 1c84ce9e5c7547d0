"""Fine-tune BERT for text classification (default: bert-base-uncased on IMDB reviews).

From the host, on every GPU (or the CPU): ./launch_training.sh bert [-- FLAGS...]
In the image (`train` starts python3, or torchrun with one process per GPU):
    train /app/test_training_bert_base.py --max_steps 20 --max_eval_samples 200
Plain `docker run` lines for CPU, one GPU and N GPUs: docs/training.md.
Your own data: --train_file data.csv [--validation_file val.csv] --text_column review --label_column stars.
A config file instead of flags: train /app/test_training_bert_base.py /volume/bert.yaml.

Any TrainingArguments flag works. Unlike Trainer, --do_train and --do_eval default to on
(`--do_eval False` skips evaluation), batches are grouped by length, TensorBoard logs are
written, and --output_dir is $OUTPUT_ROOT/<model name> (/volume/bert-base-uncased). Running
again with that output_dir resumes from its newest complete checkpoint, and a finished run
trains nothing more; on SIGTERM a checkpoint is saved and the exit status is 75. GPU
defaults: 32 examples per device, a checkpoint every 15 minutes (--save_every_minutes M;
--save_steps N for step-based saving).
Results: output_dir/all_results.json (eval_accuracy, eval_f1_macro, ...).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import trainkit
from datasets import ClassLabel
from sklearn.metrics import accuracy_score, f1_score
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
)


@dataclass
class ModelArguments(trainkit.ModelArguments):
    model_name_or_path: str = field(
        default="google-bert/bert-base-uncased", metadata={"help": "Hub model id or a local folder."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Replace a classification head whose labels differ from the data's."}
    )


@dataclass
class DataArguments(trainkit.DataArguments):
    dataset_name: str | None = field(default="stanfordnlp/imdb", metadata={"help": "Hub dataset id."})
    label_column: str = field(
        default="label", metadata={"help": "Column holding the labels (strings or ints)."}
    )
    max_seq_length: int = field(default=256, metadata={"help": "Longer texts are truncated."})


def label_names(raw, column: str) -> list[str]:
    """The label set, in id order: the dataset's ClassLabel names, else the sorted distinct values."""
    feature = raw["train"].features[column]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
    else:
        values = {v for split in raw.values() for v in split[column]}
        if None in values:
            raise trainkit.UserError(f"column '{column}' has empty labels; fill or drop those rows")
        if any(isinstance(v, float) and not v.is_integer() for v in values):
            raise trainkit.UserError(f"column '{column}' holds continuous values; this program classifies")
        names = [str(int(v)) if isinstance(v, float) else str(v) for v in sorted(values)]
    if len(names) < 2:
        raise trainkit.UserError(
            f"column '{column}' has only the label {names}; classification needs two or more"
        )
    return names


def check_head(config, names: list[str], model_args: ModelArguments) -> None:
    """A checkpoint that already classifies must hold the data's labels (or be told to replace its head)."""
    trained_head = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    if not trained_head or model_args.ignore_mismatched_sizes:
        return
    have = [config.id2label[i] for i in range(config.num_labels)]
    generic = have == [f"LABEL_{i}" for i in range(len(have))]
    if (generic and len(have) != len(names)) or (not generic and have != names):
        raise trainkit.UserError(
            f"the model {model_args.model_name_or_path} holds {len(have)} labels {have[:8]}, "
            f"the data has {len(names)} {names[:8]}; "
            "pass --ignore_mismatched_sizes True to train a new classification head"
        )


def main(model_args: ModelArguments, data_args: DataArguments, training_args) -> int:
    trainkit.setup_logging(training_args)
    trainkit.check_output_dir(training_args.output_dir)
    raw = trainkit.load_raw_datasets(data_args, training_args.seed, need_validation=training_args.do_eval)
    for split in raw.values():
        trainkit.require_columns(split, data_args.text_column, data_args.label_column)
    model_name = model_args.model_name_or_path
    config = trainkit.from_pretrained(AutoConfig, model_name)
    names = label_names(raw, data_args.label_column)
    check_head(config, names, model_args)
    label2id = {name: i for i, name in enumerate(names)}
    config.num_labels, config.id2label, config.label2id = len(names), dict(enumerate(names)), label2id
    tokenizer = trainkit.from_pretrained(AutoTokenizer, model_args.tokenizer_name or model_name)
    model = trainkit.from_pretrained(
        AutoModelForSequenceClassification,
        model_name,
        config=config,
        attn_implementation=model_args.attn_implementation,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    max_length = min(data_args.max_seq_length, tokenizer.model_max_length)
    is_class_label = isinstance(raw["train"].features[data_args.label_column], ClassLabel)

    def preprocess(batch):
        encoded = tokenizer(batch[data_args.text_column], truncation=True, max_length=max_length)
        labels = batch[data_args.label_column]
        encoded["labels"] = labels if is_class_label else [label2id[str(v)] for v in labels]
        return encoded

    data = trainkit.tokenize_splits(raw, preprocess, training_args, data_args, desc="tokenize")

    def compute_metrics(pred):
        # scikit-learn, not `evaluate.load("accuracy")`: that fetches metric code from the Hub
        # at run time, which fails offline (HF_HUB_OFFLINE=1) and on machines without network.
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        predicted = np.argmax(logits, axis=-1)
        return {
            "accuracy": accuracy_score(pred.label_ids, predicted),
            "f1_macro": f1_score(pred.label_ids, predicted, average="macro"),
        }

    # Padding to a multiple of 8 suits tensor cores; under --torch_compile, to a multiple of 64:
    # a few fixed lengths that compile once each, instead of a recompile for every new length.
    pad_to = 64 if training_args.torch_compile else 8
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to)
    trainer = trainkit.make_trainer(
        model, training_args, data, tokenizer, collator, compute_metrics=compute_metrics
    )
    return trainkit.train_and_evaluate(trainer, (model_args, data_args, training_args))


def parse_args(argv):
    # On a GPU, 32 examples per device (Trainer's default is 8; 32 is the largest batch of the BERT
    # paper's fine-tuning grid, whose learning rates include Trainer's 5e-5): see docs/gpu-throughput.md.
    return trainkit.parse(
        (ModelArguments, DataArguments),
        argv,
        gpu_defaults={"per_device_train_batch_size": 32},
        train_sampling_strategy="group_by_length",
    )


if __name__ == "__main__":
    sys.exit(trainkit.cli(main, parse_args, sys.argv[1:]))
