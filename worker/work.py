"""What every kind of job's work shares (an explanation, an audit's batch or its finaliser): the model a job
names, the signal that its lease was taken, and how an error becomes the problem recorded on the row."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select

from service.db import Model
from service.errors import Problem, store_full
from service.models import ModelRef
from service.runtime import Runtime
from service.storage import is_full


class LeaseLost(Exception):
    """Another worker (or the reaper) took this job: stop without writing anything."""


def model_ref(rt: Runtime, tenant_id: str, name: str, revision: str) -> ModelRef:
    """The job's tenant's registration of that revision (none: a zoo model)."""
    with rt.db.session() as s:
        key = s.scalar(select(Model.storage_key).where(Model.tenant_id == tenant_id, Model.name == name,
                                                       Model.revision == revision))
    return ModelRef(name, revision, key is None, key)


def problem_of(error: Exception) -> dict[str, Any]:
    if isinstance(error, Problem):
        return error.body()
    if is_input_error(error):
        return Problem(422, "Cannot explain this input", str(error)).body()
    if is_time_limit(error):
        return Problem(504, "Time limit", "the job ran past its time limit").body()
    if is_full(error):
        return store_full("this job").body()
    return Problem(500, "Job failed", f"{type(error).__name__}: {str(error)[:500]}").body()


def is_input_error(error: Exception) -> bool:
    from worker.models.base import InputError

    return isinstance(error, InputError)


def is_time_limit(error: Exception) -> bool:
    from celery.exceptions import SoftTimeLimitExceeded

    return isinstance(error, SoftTimeLimitExceeded)
