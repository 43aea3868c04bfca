"""The lease keeper: a running job's lease is beaten from a small sidecar process, not from a thread of the process
that runs the job.

A thread would need the interpreter lock, and a job can hold it for minutes inside one C call (a backtracking
regex, a long tensor op): its heartbeat would stop, the lease expire and a live worker be taken for dead. The sidecar
has an interpreter of its own: ``python -m worker.lease``, started on first use, one per worker process, importing
only service.config, service.db and service.jobs (not torch, not the job's code). It is a plain subprocess rather
than a multiprocessing child because Celery's pool processes are daemonic, and multiprocessing refuses children to
those.

The two share one small memory-mapped table (a memfd passed down): per job in flight its id, lease owner and
settings (database URL, lease length: in memory, never on a command line), a generation (bumped on every hold and
release), the latest progress and whether the lease is still ours. Writes of spec + generation take a POSIX record
lock on that file, which the kernel drops if its holder dies; progress and the owned verdict are single aligned
words. The sidecar beats every lease_seconds/3 while a slot holds a job, and exits as soon as its parent is gone
(SIGKILL and OOM included), so a dead worker's lease still runs out.
"""
from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import json
import logging
import math
import mmap
import os
import signal
import subprocess
import sys
import threading
import time

from service import jobs
from service.config import Settings
from service.db import Database

log = logging.getLogger("lantern.worker")

SLOTS = 8  # jobs in flight per worker process (prefork runs one; threads in tests may run a few)
SPEC = 4096  # bytes for one job's (id, lease owner, settings) as JSON (which escapes NUL: none in the bytes)
POLL = 0.1  # seconds between the sidecar's looks at its slots and at its parent
START_TIMEOUT = 60.0


class Slot(ctypes.Structure):
    _fields_ = [("generation", ctypes.c_uint64),
                ("progress", ctypes.c_double),  # NaN: no progress to write
                ("owned", ctypes.c_int64),  # generation * 2 + (1 owned, 0 lost): one word, written at once
                ("spec", ctypes.c_char * SPEC)]  # b"" when free


class Table(ctypes.Structure):
    _fields_ = [("ready", ctypes.c_int64), ("slots", Slot * SLOTS)]


class Shared:
    """The table in a memfd both processes map; `fd` is what the sidecar inherits."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.map = mmap.mmap(fd, ctypes.sizeof(Table))
        self.table = Table.from_buffer(self.map)

    @classmethod
    def create(cls) -> Shared:
        fd = os.memfd_create("lantern-lease", 0) if hasattr(os, "memfd_create") else _temp_fd()
        os.ftruncate(fd, ctypes.sizeof(Table))
        return cls(fd)

    def locked(self, timeout: float | None = None) -> bool:
        """Take the record lock (blocking, or giving up after `timeout` s); release with unlock()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                return True
            except OSError:
                if deadline is not None and time.monotonic() > deadline:
                    return False
                time.sleep(0.005)

    def unlock(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def write(self, slot: int, spec: bytes) -> int:
        s = self.table.slots[slot]
        self.locked()
        try:
            s.spec = spec
            s.progress = math.nan
            s.generation += 1
            return s.generation
        finally:
            self.unlock()

    def read(self) -> list[tuple[int, bytes]] | None:
        """(generation, spec; b"" when free) per slot; None when the lock is not to be had right now."""
        if not self.locked(timeout=1.0):
            return None
        try:
            return [(s.generation, s.spec) for s in self.table.slots]
        finally:
            self.unlock()


def _temp_fd() -> int:
    import tempfile

    fd, path = tempfile.mkstemp(prefix="lantern-lease-")
    os.unlink(path)
    return fd


class Keeper:
    """The worker-process side: starts the sidecar and hands out slots."""

    def __init__(self) -> None:
        self.shared = Shared.create()
        self.free = list(range(SLOTS))
        self.slots_lock = threading.Lock()  # record locks are per process: threads of this one queue here first
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # import what we import
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker.lease", str(self.shared.fd), str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(self.shared.fd,), env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.shared.table.ready:  # its first beat must not find a lease already run out
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the lease keeper did not start (exit code {self.process.returncode})")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.process.poll() is None

    def hold(self, settings: Settings, job_id: str, worker: str) -> Lease:
        # the settings travel with each job (database URL, lease length), in memory only: never on a command line
        spec = json.dumps([job_id, worker, dataclasses.asdict(settings)]).encode()
        if len(spec) >= SPEC:
            raise ValueError(f"a job's lease spec over {SPEC - 1} bytes")
        with self.slots_lock:
            if not self.free:
                raise RuntimeError(f"more than {SLOTS} jobs in flight in one worker process")
            slot = self.free.pop()
            return Lease(self, slot, self.shared.write(slot, spec))

    def give_back(self, slot: int) -> None:
        with self.slots_lock:
            self.shared.write(slot, b"")
            self.free.append(slot)

    def close(self) -> None:
        if self.alive():
            self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Lease:
    """One held slot: what the runner's Heartbeat reads and writes."""

    def __init__(self, keeper: Keeper, slot: int, generation: int) -> None:
        self.keeper, self.slot, self.generation = keeper, slot, generation
        self.released = False

    @property
    def owned(self) -> bool:
        stamp = self.keeper.shared.table.slots[self.slot].owned
        return stamp >> 1 != self.generation or bool(stamp & 1)  # no verdict for this job yet: still ours

    def set_progress(self, fraction: float | None) -> None:
        self.keeper.shared.table.slots[self.slot].progress = math.nan if fraction is None else fraction

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.keeper.give_back(self.slot)


_keepers: dict[int, Keeper] = {}
_keepers_lock = threading.Lock()


def keeper() -> Keeper:
    """This process's keeper (a new one if its sidecar died)."""
    pid = os.getpid()  # a forked child never uses its parent's
    with _keepers_lock:
        found = _keepers.get(pid)
        if found is None or not found.alive():
            found = _keepers[pid] = Keeper()
        return found


def hold(settings: Settings, job_id: str, worker: str) -> Lease:
    return keeper().hold(settings, job_id, worker)


def close() -> None:
    """Stop this process's sidecar (tests; it also stops by itself when this process exits)."""
    with _keepers_lock:
        found = _keepers.pop(os.getpid(), None)
    if found is not None:
        found.close()


# --- the sidecar ----------------------------------------------------------------------------------------------


def keep(parent: int, shared: Shared) -> None:
    """The sidecar's main loop: beat every held slot's lease each lease_seconds/3 until the parent is gone."""
    databases: dict[str, Database] = {}  # one engine per database URL, kept across jobs
    held: dict[int, tuple[int, tuple | None, float]] = {}  # slot -> (generation, (job, owner, settings), next beat)
    shared.table.ready = 1
    while os.getppid() == parent:
        now = time.monotonic()
        for slot, (generation, spec) in enumerate(shared.read() or ()):
            if slot not in held or held[slot][0] != generation:  # a new hold or a release: the claim just set it
                job = _job(spec) if spec else None
                held[slot] = (generation, job, now + _interval(job))
            generation, job, due = held[slot]
            if job is None or now < due:
                continue
            job_id, worker, settings = job
            db = _database(databases, settings.db_url, {j[2].db_url for _, j, _ in held.values() if j})
            owned = beat(db, settings, job_id, worker, shared.table.slots[slot].progress)
            if owned is not None:
                shared.table.slots[slot].owned = generation * 2 + int(owned)
            # once lost, another worker owns it: no more beats; the runner stops at its next step
            held[slot] = (generation, job, math.inf if owned is False else now + _interval(job))
        time.sleep(POLL)
    for db in databases.values():
        db.dispose()


def _job(spec: bytes) -> tuple[str, str, Settings]:
    """(job id, lease owner, settings) from a slot's spec: plain JSON, never code (no pickle across processes)."""
    job_id, worker, values = json.loads(spec)
    return job_id, worker, Settings(**values)


def _database(databases: dict[str, Database], url: str, in_use: set[str]) -> Database:
    """The engine for `url`, kept for the next job; engines no held job uses go once there are a few (tests run
    one database after another through one process)."""
    if url not in databases:
        if len(databases) >= 4:
            for old in [u for u in databases if u not in in_use]:
                databases.pop(old).dispose()
        databases[url] = Database(url)
    return databases[url]


def _interval(job: tuple | None) -> float:
    return math.inf if job is None else max(job[2].lease_seconds / 3, 0.2)


def beat(db, settings, job_id: str, worker: str, progress: float) -> bool | None:
    """One heartbeat; None when the database did not answer (the lease has slack for two more beats)."""
    try:
        return jobs.heartbeat(db, job_id, worker, settings, None if math.isnan(progress) else round(progress, 4))
    except Exception:
        log.warning("heartbeat failed for job %s", job_id)
        return None


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the worker; this one follows it out
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s lease keeper: %(message)s")
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    if os.getppid() == parent:
        keep(parent, Shared(fd))


if __name__ == "__main__":
    main()
