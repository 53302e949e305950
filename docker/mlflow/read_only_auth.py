"""MLflow's basic-auth sign-in, with read-only users: the ``authorization_function`` of the MLflow image's auth
configuration (start-mlflow.sh writes it).

MLflow's permission model cannot make a user read-only by itself: ``default_permission = READ`` only limits what
a user may do to resources that already exist. While workspaces are off, every signed-in user may create
experiments, runs and registered models (``mlflow.server.auth._can_create_in_workspace``), and becomes the
manager of what it creates, so it may then add versions and move aliases on it.

The users named in ``MLFLOW_READ_ONLY_USERS`` (comma-separated; the prediction API's) therefore get a refusal,
403, for every request that is not a read, before MLflow's own permission checks; every other request goes on to
those checks unchanged. A read is a GET, HEAD or OPTIONS request (MLflow's REST API and artifact proxy change
nothing on those), or a POST to one of the endpoints that only search (``.../search``, ``.../search-datasets``,
``.../get-latest-versions``). The auth app calls this function for its Flask routes and its FastAPI routes alike.
"""

from __future__ import annotations

import os
from functools import lru_cache

from flask import Response, request
from mlflow.server.auth import authenticate_request_basic_auth, make_forbidden_response
from werkzeug.datastructures import Authorization

READ_ONLY_USERS_VARIABLE = "MLFLOW_READ_ONLY_USERS"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: POST endpoints that only read: MLflow's searches take their filters in a request body.
READING_POST_SUFFIXES = ("/search", "/search-datasets", "/get-latest-versions")


@lru_cache(maxsize=1)
def read_only_users() -> frozenset[str]:
    """The read-only users, from ``MLFLOW_READ_ONLY_USERS`` (read once: the server's environment is fixed)."""
    value = os.environ.get(READ_ONLY_USERS_VARIABLE)
    if value is None:
        raise RuntimeError(
            f"{READ_ONLY_USERS_VARIABLE} is not set: name the read-only MLflow users (comma-separated) in the "
            "server's environment"
        )
    return frozenset(name.strip() for name in value.split(",") if name.strip())


def is_read(method: str, path: str) -> bool:
    """Whether a request with this method and path only reads."""
    if method.upper() in READ_METHODS:
        return True
    return method.upper() == "POST" and path.rstrip("/").endswith(READING_POST_SUFFIXES)


def authenticate_request_read_only_users() -> Authorization | Response:
    """Basic-auth sign-in; a read-only user's request that is not a read is refused with 403."""
    authorization = authenticate_request_basic_auth()
    if (
        isinstance(authorization, Authorization)
        and authorization.username in read_only_users()
        and not is_read(request.method, request.path)
    ):
        return make_forbidden_response()
    return authorization
