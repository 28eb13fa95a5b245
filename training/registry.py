"""The MLflow store, the registered model `kairos`, its aliases and the promotion gate."""
from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["MODEL_NAME", "alias_version", "client", "configure", "set_alias", "tracking_uri"]

MODEL_NAME = "kairos"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the sqlite store under ./mlruns of the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}"


def configure() -> str:
    """Point MLflow at the Kairos store (creating ./mlruns when it is the local default) and quieten it."""
    from urllib.parse import urlsplit

    import mlflow

    from features.errors import InputError

    uri = tracking_uri()
    if urlsplit(uri).scheme in ("", "file") and uri != "databricks":
        raise InputError(f"MLFLOW_TRACKING_URI {uri}: a folder store (MLflow's file backend) is not supported by this "
                         f"MLflow; use a database, e.g. sqlite:///{Path(uri.removeprefix('file:')).resolve()}.db")
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"MLFLOW_TRACKING_URI {uri}: cannot create the folder {folder} "
                             f"({exc.strerror or exc})") from None
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.models.model", "mlflow.tracking._tracking_service.client"):
        logging.getLogger(name).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def client():
    """An MlflowClient on the configured store."""
    from mlflow import MlflowClient

    configure()
    return MlflowClient()


def alias_version(alias: str, name: str = MODEL_NAME) -> str | None:
    """The version that holds `alias`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_alias(alias: str, version: str, name: str = MODEL_NAME) -> None:
    """Point `alias` at `version`."""
    client().set_registered_model_alias(name, alias, str(version))
