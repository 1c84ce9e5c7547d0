"""A "bring your own" text classifier, written the way Hugging Face's example scripts are.

Test asset for tests/test_byo_script.py: a plain Trainer script that knows nothing of
this project (it does not import trainkit). Options are TrainingArguments plus the
dataclasses below, parsed by HfArgumentParser, or one .json/.yaml file of them (as
upstream's run_clm.py reads it); `--do_train` / `--do_eval` are switches;
`--resume_from_checkpoint DIR` resumes. It prints "byo: step N" after each step (rank 0).
Test-only: BYO_STEP_DELAY=SECONDS slows each step so a signal can land mid-training.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

from datasets import load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "a local model folder"})


@dataclass
class DataArguments:
    train_file: str = field(metadata={"help": "csv with a text and a label column"})
    validation_file: str | None = None
    text_column: str = "review"
    label_column: str = "sentiment"
    max_seq_length: int = 32


class Report(TrainerCallback):
    """Say where training begins (the resume step) and slow steps when asked."""

    def __init__(self) -> None:
        self.delay = float(os.environ.get("BYO_STEP_DELAY", "0"))

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            print(f"byo: train begins at step {state.global_step} of {state.max_steps}", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            print(f"byo: step {state.global_step}", flush=True)
        if self.delay:
            time.sleep(self.delay)


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    elif len(sys.argv) == 2 and sys.argv[1].endswith((".yaml", ".yml")):
        model_args, data_args, training_args = parser.parse_yaml_file(yaml_file=os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses()

    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_args.model_name_or_path)
    files = {"train": data_args.train_file}
    if data_args.validation_file:
        files["validation"] = data_args.validation_file
    raw = load_dataset("csv", data_files=files)

    def encode(batch):
        out = tokenizer(batch[data_args.text_column], truncation=True, max_length=data_args.max_seq_length)
        out["labels"] = [model.config.label2id[label] for label in batch[data_args.label_column]]
        return out

    data = raw.map(encode, batched=True, remove_columns=raw["train"].column_names)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data.get("validation"),
        processing_class=tokenizer,
        callbacks=[Report()],
    )
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)


if __name__ == "__main__":
    sys.exit(main())
