"""Deployment: roll a registered model version out, verify it live, and only then move ``champion``.

Targets are chosen by ``HEALTHPREDICT_DEPLOY_TARGET``: ``local`` (the embedded default: a real uvicorn
candidate process) in :mod:`healthpredict.deploy.local`, and ``kubernetes`` (build and push the image, patch
the Deployment, wait, verify through the Service, undo on failure) in :mod:`healthpredict.deploy.kubernetes`.
"""

from healthpredict.deploy.common import DeploymentError, DeploymentReport, deploy_version

__all__ = ["DeploymentError", "DeploymentReport", "deploy_version"]
