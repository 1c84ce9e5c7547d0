"""Build tiny BERT and GPT-2 models for the training tests (run INSIDE the image).

No model can be downloaded here, so the models are made from configs with random
weights, and their tokenizers are trained with the `tokenizers` library on the test's
own text. Usage: python3 make_tiny_models.py TEXT_FILE OUT_DIR [TEXT_FILE OUT_DIR ...]
(several pairs: one process, one import of torch and transformers, for several texts).
Writes OUT_DIR/tiny-bert (BertForMaskedLM, like bert-base-uncased), OUT_DIR/tiny-bert-2labels
(an already fine-tuned-looking classifier with labels neg/pos) and OUT_DIR/tiny-gpt2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

MAX_LEN = 64


def word_level(texts: list[str], specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    return tok


def bert_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = word_level(texts, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_LEN,
    )


def gpt2_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = word_level(texts, ["[UNK]", "<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", eos_token="<|endoftext|>", model_max_length=MAX_LEN
    )


def main(text_file: str, out: str) -> None:
    torch.manual_seed(0)
    texts = Path(text_file).read_text().splitlines()
    out_dir = Path(out)

    tok = bert_tokenizer(texts)
    bert = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    config = BertConfig(vocab_size=len(tok), max_position_embeddings=MAX_LEN, pad_token_id=0, **bert)
    for name, model in (
        ("tiny-bert", BertForMaskedLM(config)),
        (
            "tiny-bert-2labels",
            BertForSequenceClassification(
                BertConfig(
                    **{**config.to_dict(), "id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
                )
            ),
        ),
    ):
        model.save_pretrained(out_dir / name)
        tok.save_pretrained(out_dir / name)

    tok = gpt2_tokenizer(texts)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=MAX_LEN,
        n_embd=32,
        n_layer=2,
        n_head=2,
        eos_token_id=1,
        bos_token_id=1,
    )
    GPT2LMHeadModel(config).save_pretrained(out_dir / "tiny-gpt2")
    tok.save_pretrained(out_dir / "tiny-gpt2")
    print("made", sorted(p.name for p in out_dir.iterdir()))


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or len(args) % 2:
        sys.exit("usage: make_tiny_models.py TEXT_FILE OUT_DIR [TEXT_FILE OUT_DIR ...]")
    for text_file, out in zip(args[::2], args[1::2], strict=True):
        main(text_file, out)
