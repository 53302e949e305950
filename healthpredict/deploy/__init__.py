"""Deployment: roll a registered model version out, verify it live, and only then move ``champion``.

Targets are chosen by ``HEALTHPREDICT_DEPLOY_TARGET``: ``local`` (the embedded default: a real uvicorn
candidate process) is implemented in :mod:`healthpredict.deploy.local`.
"""

from healthpredict.deploy.common import DeploymentError, DeploymentReport, deploy_version

__all__ = ["DeploymentError", "DeploymentReport", "deploy_version"]
