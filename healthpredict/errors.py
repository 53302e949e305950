"""Which failures are permanent: running the same step again with the same inputs cannot heal them.

A missing local file, a checksum mismatch, data that fails its schema and a malformed setting fail the same way
on every try, so a retry only delays the one line that says what to fix; a deployment that failed and was undone
must not be rolled out again. Their exception classes carry :class:`PermanentError`. Everything else (a registry,
store or download that did not answer) may heal, and a step that does I/O retries it.
"""

from __future__ import annotations


class PermanentError(Exception):
    """Marker of a failure a retry cannot heal or must not repeat; mixed into the project's specific errors."""


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or while handling (both links followed), each once."""
    chain: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if any(current is seen for seen in chain):
            continue
        chain.append(current)
        pending += [linked for linked in (current.__cause__, current.__context__) if linked is not None]
    return chain


def is_permanent(exc: BaseException) -> bool:
    """Whether ``exc`` or any exception in its chain is permanent: an error raised while handling a permanent one
    (a registry that refused to record a failed deployment) does not make the first one heal."""
    return any(isinstance(error, PermanentError) for error in exception_chain(exc))
