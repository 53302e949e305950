"""The champion lock: one section that can move ``champion`` (gate → deploy → alias) runs at a time.

Two locks, taken in this order and both held for the whole section:

1. with a Prefect server (``PREFECT_API_URL``, from the environment or the Prefect profile): the global concurrency
   limit ``champion-lock-<model name>`` with one slot, created when missing. It spans every deployment, every
   work pool (process, docker, Kubernetes) and every CLI run that talks to that server. Its slot is a lease the
   holder renews; a holder that dies frees it when the lease runs out (:data:`LEASE_S`), and a renewal that
   fails is logged while the section goes on (stopping a rollout half-way would be worse). Who holds it is
   recorded in the Prefect variable of the same name, so a waiting run can say whom it waits for.
2. always: an exclusive ``flock`` on ``<HEALTHPREDICT_HOME>/champion.lock``, which covers runs without a
   Prefect server that share a home (the CLI's temporary local Prefect, two terminals).

A run that finds the lock taken waits, logging who holds it, for at most ``HEALTHPREDICT_CHAMPION_LOCK_TIMEOUT_S``
(0: fail at once), then fails with :class:`ChampionLockError` having changed nothing. The lock is re-entrant in
one thread: ``promote`` holds it around the gate and the deployment it starts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from healthpredict.deploy.verify import DeploymentError
from healthpredict.settings import Settings

log = logging.getLogger(__name__)

#: Seconds a Prefect slot stays held without renewal: how long a holder that died blocks the others.
LEASE_S = 120.0
#: Seconds between "still waiting" log lines.
WAIT_LOG_INTERVAL_S = 30.0
POLL_S = 0.5
PREFECT_POLL_S = 2.0

_held = threading.local()


class ChampionLockError(DeploymentError):
    """The champion lock was not taken (another run held it past the timeout, or its Prefect limit is not a
    one-slot limit): nothing was gated, deployed or moved."""


def lock_name(settings: Settings) -> str:
    """``champion-lock-<model name>``, in the characters both a Prefect limit and a Prefect variable allow."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", settings.tracking.model_name.lower()).strip("-") or "model"
    return f"champion-lock-{slug}"


def prefect_api_url() -> str | None:
    """The Prefect server this process talks to (``PREFECT_API_URL`` or the active profile), if any."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def holder_description() -> str:
    """Who is moving ``champion``: the flow run (and its deployment) when there is one, the process always."""
    where = f"pid {os.getpid()} on {socket.gethostname()}, since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"
    try:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
    except Exception:  # no Prefect context machinery: a plain process
        context = None
    if context is None or context.flow_run is None:
        return where
    run = context.flow_run
    flow = getattr(context.flow, "name", None) or "flow"
    deployment = ""
    if run.deployment_id is not None:
        try:
            from prefect.runtime import deployment as current_deployment

            deployment = f" of deployment {flow}/{current_deployment.name}"
        except Exception:
            deployment = f" of deployment {run.deployment_id}"
    return f"flow run {run.name!r} ({run.id}){deployment}, {where}"


@contextmanager
def champion_lock(settings: Settings, holder: str | None = None) -> Iterator[None]:
    """Hold the champion lock for the section in the ``with`` block (re-entrant in one thread)."""
    depth = getattr(_held, "depth", 0)
    if depth:
        _held.depth = depth + 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    holder = holder or holder_description()
    timeout = settings.deploy.champion_lock_timeout_s
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    with ExitStack() as stack:
        api = prefect_api_url()
        if api is not None:
            stack.enter_context(_prefect_slot(lock_name(settings), api, holder, deadline, timeout))
        stack.enter_context(_home_lock(settings.home / "champion.lock", holder, deadline, timeout))
        where = f"Prefect limit {lock_name(settings)} at {api} and " if api else ""
        log.info("champion lock taken (%s%s) after %.1f s", where, settings.home / "champion.lock", _since(started))
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0
            log.info("champion lock released")


def _since(start: float) -> float:
    return time.monotonic() - start


def _waiting(name: str, holder: Callable[[], str], waited: float, timeout: float) -> None:
    log.info("waiting for the champion lock %s held by %s (%.0f s of at most %.0f s)", name, holder(), waited, timeout)


def _timed_out(name: str, holder: str, timeout: float) -> ChampionLockError:
    return ChampionLockError(
        f"the champion lock {name} is held by {holder}; gave up after {timeout:.0f} s "
        f"(HEALTHPREDICT_CHAMPION_LOCK_TIMEOUT_S): nothing was gated, deployed or moved, run it again once that "
        f"one has finished"
    )


# -- the Prefect global concurrency limit ------------------------------------------------------------------------


def ensure_limit(name: str, api: str) -> None:
    """Create the one-slot limit when it is missing; refuse one that is not a single active slot."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
                log.info("created the global concurrency limit %s (1 slot) at %s", name, api)
                return
            except ObjectAlreadyExists:  # another run created it first
                found = client.read_global_concurrency_limit_by_name(name)
    if found.limit != 1 or not found.active or found.slot_decay_per_second:
        raise ChampionLockError(
            f"the global concurrency limit {name} at {api} must be an active limit of 1 slot with no slot decay "
            f"(it has limit {found.limit}, active {found.active}, decay {found.slot_decay_per_second}); fix it with "
            f"`prefect gcl update {name} --limit 1 --enable --slot-decay-per-second 0` or delete it to let the "
            f"next run create it"
        )


def _read_holder(name: str) -> str:
    from prefect.variables import Variable

    try:
        value = Variable.get(name)
    except Exception as exc:  # the record is informative only
        return f"an unknown run (its record could not be read: {type(exc).__name__})"
    return str(value) if value else "an unknown run (none recorded)"


def _record_holder(name: str, holder: str | None) -> None:
    from prefect.variables import Variable

    try:
        if holder is None:
            Variable.unset(name)
        else:
            Variable.set(name, holder, overwrite=True)
    except Exception as exc:
        log.warning("could not record the champion lock's holder in Prefect variable %s: %s", name, exc)


def _flow_run_holder() -> Any:
    """The lease holder Prefect records on the slot: this flow run, when there is one."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    return ConcurrencyLeaseHolder(type="flow_run", id=context.flow_run.id)


@contextmanager
def _prefect_slot(name: str, api: str, holder: str, deadline: float, timeout: float) -> Iterator[None]:
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    try:
        ensure_limit(name, api)
    except ChampionLockError:
        raise
    except Exception as exc:
        raise ChampionLockError(
            f"cannot reach the Prefect server at {api} to take the champion lock {name}: {exc}"
        ) from exc
    started, logged = time.monotonic(), -WAIT_LOG_INTERVAL_S
    lease_holder = _flow_run_holder()
    # Waiting polls the limit's free slots and asks for the slot only when one is free: no request is left
    # pending (and cancelled) when the wait ends, and a busy lock is not an error in Prefect's own log.
    while True:
        if _free_slots(name) > 0:
            slot = concurrency(
                name, occupy=1, max_retries=0, lease_duration=LEASE_S, strict=True, holder=lease_holder,
                raise_on_lease_renewal_failure=False,
            )  # fmt: skip
            try:
                slot.__enter__()
                break
            except ConcurrencySlotAcquisitionError as exc:  # taken between the look and the request: wait on
                if not _locked(exc):
                    raise ChampionLockError(f"cannot take the champion lock {name} at {api}: {exc}") from exc
        if time.monotonic() >= deadline:
            raise _timed_out(name, _read_holder(name), timeout)
        if time.monotonic() - logged >= WAIT_LOG_INTERVAL_S:
            _waiting(name, lambda: _read_holder(name), _since(started), timeout)
            logged = time.monotonic()
        time.sleep(min(PREFECT_POLL_S, max(0.0, deadline - time.monotonic())))
    _record_holder(name, holder)
    try:
        yield
    finally:
        _record_holder(name, None)  # before the slot is free, so it never erases the next holder's record
        try:
            slot.__exit__(None, None, None)
        except Exception as exc:  # the section is done; its lease runs out on its own
            log.warning("could not release the champion lock %s (%s); it frees within %.0f s", name, exc, LEASE_S)


def _free_slots(name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.read_global_concurrency_limit_by_name(name)
    return int(found.limit - found.active_slots)


def _locked(exc: BaseException) -> bool:
    """Whether an acquisition error is the server's "no slot free" (HTTP 423) answer."""
    cause = exc.__cause__
    response = getattr(cause, "response", None)
    return getattr(response, "status_code", None) == 423


# -- the home's file lock ----------------------------------------------------------------------------------------


@contextmanager
def _home_lock(path: Path, holder: str, deadline: float, timeout: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        started, logged = time.monotonic(), -WAIT_LOG_INTERVAL_S

        def current() -> str:
            handle.seek(0)
            return handle.read().strip() or "another process"

        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _timed_out(str(path), current(), timeout) from None
                if time.monotonic() - logged >= WAIT_LOG_INTERVAL_S:
                    _waiting(str(path), current, _since(started), timeout)
                    logged = time.monotonic()
                time.sleep(POLL_S)
        handle.seek(0)
        handle.truncate()
        handle.write(holder)
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
