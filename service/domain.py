"""The words of the job lifecycle, spelled once: what a job or audit can be, and what kind of work a job is.

StrEnum members are their strings, so rows, JSON documents and comparisons with plain strings keep working.
"""
from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    WAITING = "waiting"  # an audit's finaliser, until every batch of its audit has ended

    @property
    def finished(self) -> bool:
        return self in FINISHED


class JobKind(StrEnum):
    EXPLAIN = "explain"
    AUDIT_BATCH = "audit_batch"  # some items of an audit through one model
    AUDIT_FINALIZE = "audit_finalize"  # the audit's aggregates and report, once its batches have ended


class ItemStatus(StrEnum):
    """An audit item through one model."""

    QUEUED = "queued"
    DONE = "done"
    FAILED = "failed"


# the statuses a client sees (WAITING is an audit finaliser's, internal)
JOB_STATES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
IN_FLIGHT = (JobStatus.QUEUED, JobStatus.RUNNING)
