"""The one settings object. Every setting is an environment variable with the LANTERN_ prefix (docs/api.md).

Explicit URLs win over the data dir; `--data-dir` (passed as `data_dir=`) wins over LANTERN_DATA_DIR.
"""
from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# LANTERN_* variables read by something other than Settings: the client and CLI, and the test suite
OTHER_VARIABLES = frozenset({"LANTERN_URL", "LANTERN_API_KEY", "LANTERN_TEST_PG", "LANTERN_TEST_REDIS",
                             "LANTERN_FUZZ_EXAMPLES", "LANTERN_FUZZ_SEED"})
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
_warned: set[str] = set()  # unknown variables already warned about in this process


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable, its value and what is expected. The CLI
    prints it as one line and exits 2."""


def _finite(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _bool(value: str) -> bool:
    if value.strip().lower() not in TRUE + FALSE:
        raise ValueError(value)
    return value.strip().lower() in TRUE


@dataclass(frozen=True)
class Settings:
    data_dir: str = "./lantern-data"
    database_url: str = ""  # default: sqlite under data_dir
    broker_url: str = ""  # default: kombu's server-less SQLAlchemy transport under data_dir
    storage_url: str = ""  # file:///path or s3://bucket/prefix; default: data_dir/objects
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_public_url: str = ""  # endpoint that clients reach, for presigned downloads (default: s3_endpoint_url)
    presign_seconds: int = 900

    # queue
    job_queue: str = "gpu"  # explanation jobs; CPU-only workers consume it too (`lantern worker` default)
    cpu_queue: str = "cpu"  # rendering, aggregation, housekeeping
    soft_time_limit: int = 1800
    hard_time_limit: int = 1900
    visibility_timeout: int = 3600  # must exceed hard_time_limit (checked below)
    max_attempts: int = 3  # deliveries before a job is dead-lettered to `failed`
    lease_seconds: int = 60  # a running job's lease; heartbeat every third of it
    reaper_interval: int = 15
    requeue_after: int = 120  # a queued job not started after this long is sent again
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # CPU threads per worker process (0: torch's default, all cores). One process per core is the CPU scaling
    # unit: several processes each using every core oversubscribe the machine and OpenMP spin-waits (measured
    # here: 7.8 s instead of 0.31 s per explanation with two busy processes on two cores).
    torch_threads: int = 1
    # Models (adapters) each process keeps in memory, least recently used evicted first. A worker's memory is about
    # this many times its largest model's weights; the API only tokenises, so its adapters hold no weights.
    model_cache_size: int = 4

    # limits (enforced before enqueueing)
    max_tokens: int = 512
    max_prompt_tokens: int = 512  # generative models: prompt tokens, and tokens generated or given after it
    max_new_tokens: int = 64
    max_body_bytes: int = 1_000_000
    max_methods: int = 8
    max_in_flight: int = 20  # queued + running jobs per tenant (0: no limit)
    rate_per_minute: int = 120  # job submissions per tenant per minute (0: no limit)
    max_upload_bytes: int = 200_000_000
    max_audit_items: int = 10_000
    max_batch_inputs: int = 64  # inputs of one batch job (a list of inputs; docs/api.md)
    max_item_chars: int = 20_000  # per corpus item field, checked before anything is queued
    max_samples: int = 10_000  # per method: samples / noisy copies (lime, smoothgrad, sigma)
    max_steps: int = 2000  # per method: integration / optimisation steps (integrated_gradients, perturbation)
    model_root: str = ""  # server-side bundle paths must lie under this root (empty: none allowed)

    # retention in days, 0 = forever (service/retention.py; `lantern purge`, and the reaper's leader once a day)
    retain_jobs_days: float = 0  # finished jobs and audits, with their stored files
    retain_artifacts_days: float = 0  # only the stored files of finished jobs (the documents stay)
    retain_uploads_days: float = 0  # corpus uploads (audits copy their items when created)

    # HTTP
    log_level: str = "INFO"
    log_json: bool = False
    retry_after: int = 1  # seconds a client should wait before polling
    sync_timeout_cap: float = 60  # POST /v1/models/{name}:explain waits at most this long, whatever it asks
    # the web UI's session cookies are signed with this (required in production; the embedded default keeps one in
    # data_dir/secret_key, so every API process on the machine agrees); never shown (repr=False)
    secret_key: str = field(default="", repr=False)
    secure_cookies: bool = False  # the site is served over HTTPS: session cookies are marked Secure

    # worker observability
    worker_metrics_port: int = 0  # >0: the worker's main process serves /metrics and /healthz on this port
    worker_metrics_host: str = "0.0.0.0"

    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(f"LANTERN_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _convert(f"LANTERN_{f.name.upper()}", f.type, raw)
        warn_unknown(env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    @classmethod
    def env_names(cls) -> set[str]:
        return {f"LANTERN_{f.name.upper()}" for f in fields(cls) if f.name != "extra"}

    def check(self) -> None:
        for f in fields(self):  # every number is a size, a count, a duration or a port: none is negative
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise SettingsError(f"LANTERN_{f.name.upper()}={value}: expected 0 or more")
        if self.visibility_timeout <= self.hard_time_limit:
            raise SettingsError(f"LANTERN_VISIBILITY_TIMEOUT={self.visibility_timeout} must exceed "
                                f"LANTERN_HARD_TIME_LIMIT={self.hard_time_limit}")
        if self.soft_time_limit >= self.hard_time_limit:
            raise SettingsError(f"LANTERN_SOFT_TIME_LIMIT={self.soft_time_limit} must be below "
                                f"LANTERN_HARD_TIME_LIMIT={self.hard_time_limit}")
        if self.model_cache_size < 1:
            raise SettingsError(f"LANTERN_MODEL_CACHE_SIZE={self.model_cache_size}: expected at least 1")

    # --- derived -----------------------------------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_path / 'lantern.db'}"

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_path / 'broker.db'}"

    @property
    def storage(self) -> str:
        return self.storage_url or (self.data_path / "objects").as_uri()

    @property
    def embedded(self) -> bool:
        return self.db_url.startswith("sqlite")


EXPECTED = {"int": "a whole number", "float": "a finite number", "bool": "true or false (also 1/0, yes/no, on/off)"}


def _convert(name: str, kind: Any, raw: str) -> Any:
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    converters: dict[str, Callable[[str], Any]] = {"int": int, "float": _finite, "bool": _bool}
    convert = converters.get(kind)
    if convert is None:
        return raw
    try:
        return convert(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected {EXPECTED[kind]}") from None


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """A line per LANTERN_* variable that nothing reads (a typo is otherwise silently ignored), with the closest
    known name when there is one."""
    known = Settings.env_names() | OTHER_VARIABLES
    lines = []
    for name in sorted(n for n in env if n.startswith("LANTERN_") and n not in known):
        # compared without the shared prefix, which would make every name look close
        close = difflib.get_close_matches(name[8:], sorted(k[8:] for k in known), n=1, cutoff=0.75)
        lines.append(f"unknown setting {name} is ignored" + (f" (did you mean LANTERN_{close[0]}?)" if close else ""))
    return lines


def warn_unknown(env: Mapping[str, str]) -> None:
    """Warn once per process about each unknown LANTERN_* variable (at start: Settings.from_env and the CLI)."""
    for line in unknown_variables(env):
        if line not in _warned:
            _warned.add(line)
            logging.getLogger("lantern.config").warning(line)
