"""The Kairos BentoML service: `POST /score` and `POST /next_best_action` (DESIGN.md "HTTP contract").

Configured by the environment (`python -m serving serve` sets it): KAIROS_MODEL_URI (default
models:/kairos@champion), KAIROS_FEATURES (snapshot Parquet), KAIROS_POLICY (policy YAML), KAIROS_CONTACT_DB
(SQLAlchemy URL of the contact log), KAIROS_API_KEY (when set, `Authorization: Bearer <key>` is required except on
/healthz, /livez, /readyz, /metrics and the docs). The model is loaded once in `__init__`, so /readyz answers only
after it is loaded. Logs name counts and ids only, never purchase histories.
"""
from __future__ import annotations

import contextlib
import hmac
import logging
import os
import threading
import time
from dataclasses import replace

import bentoml
from prometheus_client import Counter

from serving.api import ActionRequest, CustomerIn, InvalidItem, Scorer, ScoreRequest
from serving.policy import PolicyConfig, load_policy

__all__ = ["ApiKeyMiddleware", "Kairos", "service_policy"]

log = logging.getLogger("bentoml.kairos")  # under BentoML's configured logger
DECISIONS = Counter("kairos_decisions", "Decisions answered, by endpoint, action and channel",
                    ["endpoint", "action", "channel"])
CUSTOMERS = Counter("kairos_customers", "Customers in requests, by endpoint, path (snapshot, raw, invalid) and "
                    "outcome (answered, unknown: not in the snapshot, error: not valid or not scored)",
                    ["endpoint", "path", "outcome"])
OPEN_PATHS = ("/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/", "/static_content")
TIMEOUT_S = 60  # BentoML answers 504 after this; the worker thread would still run on
RECORD_BY_S = TIMEOUT_S - 10  # nudges are recorded only if the answer can still reach the client


class ApiKeyMiddleware:
    """ASGI middleware: when KAIROS_API_KEY is set, require `Authorization: Bearer <key>` (401 otherwise)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        key = os.environ.get("KAIROS_API_KEY")
        path = scope.get("path", "")
        if key and scope["type"] == "http" and not (path in OPEN_PATHS or path.startswith("/static_content")):
            auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.strip().partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                body = b'{"error": "missing or wrong API key: send Authorization: Bearer <key>"}'
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def service_policy() -> PolicyConfig:
    """The policy of KAIROS_POLICY and KAIROS_AHA_RULES without its budget: a budget is spent over one batch run;
    per request it would depend on how customers happen to be grouped into requests."""
    config = load_policy(os.environ.get("KAIROS_POLICY"), os.environ.get("KAIROS_AHA_RULES"))
    if config.budget is None:
        return config
    log.info("the policy's budget (%g) applies to batch runs; the service decides each customer without it",
             config.budget)
    return replace(config, budget=None)


def _compile(model, version: str) -> None:
    """Compile the model's boosters (the first time per version and machine can take a minute): until then requests
    are scored by LightGBM itself, with the same numbers."""
    t0 = time.perf_counter()
    try:
        model.compile()
    except Exception as exc:  # noqa: BLE001  (LLVM failures must not take the service down; LightGBM keeps scoring)
        log.warning("model version %s not compiled (%s); scoring with LightGBM", version, type(exc).__name__)
        return
    log.info("model version %s compiled in %.1f s", version, time.perf_counter() - t0)


class QuietBadRequests(logging.Filter):
    """BentoML logs every 400 at ERROR with a traceback whose validation errors quote the request body (purchase
    histories): such records become one WARNING line with the error count, no body."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            record.msg, record.args = "bad request on %s: %d validation errors (answered 400)", (
                (record.args or ("?",))[0], exc.error_count())
            record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.WARNING, "WARNING"
        return True


def _path(item: CustomerIn | InvalidItem) -> str:
    """How an item is answered: `snapshot` (by id), `raw` (history scored on the fly) or `invalid`."""
    if isinstance(item, InvalidItem):
        return "invalid"
    return "snapshot" if item.transactions is None and item.events is None else "raw"


@bentoml.service(workers=1, traffic={"timeout": TIMEOUT_S})
class Kairos:
    """Next-best-action scoring: the champion model, the feature snapshot, the policy and the contact log."""

    def __init__(self) -> None:
        from features.lifecycle import TRIGGER_COLUMNS
        from serving.contact_log import ContactLog
        from serving.policy import required_columns, resolve_timing
        from serving.scoring import load_model
        from serving.snapshot import Snapshot

        t0 = time.perf_counter()
        logging.getLogger("bentoml._internal.server.http_app").addFilter(QuietBadRequests())
        contact_log = ContactLog()  # first: a bad KAIROS_CONTACT_DB fails before the model is loaded
        model_uri = os.environ.get("KAIROS_MODEL_URI", "models:/kairos@champion")
        model, version = load_model(model_uri, compiled=False)  # compiled in the background once ready
        config = service_policy()
        snapshot = None
        if os.environ.get("KAIROS_FEATURES"):
            snapshot = Snapshot.load(os.environ["KAIROS_FEATURES"], model, required_columns(config), config)
        config = resolve_timing(config, snapshot.features if snapshot is not None else None)
        missing = [r.column for r in config.aha_rules if snapshot is not None and r.column not in snapshot.cols]
        if missing:
            log.warning("the snapshot lacks the Aha-rule counts %s: look-ups get no Aha message (build it with "
                        "--aha-rules)", ", ".join(missing))
        stale = [c for c in TRIGGER_COLUMNS if snapshot is not None and c not in snapshot.cols]
        if stale:
            log.warning("the snapshot lacks the moment columns %s (built by an older version): look-ups miss the "
                        "moments that need them (build it again)", ", ".join(stale))
        self.scorer = Scorer(model, version, config, snapshot, contact_log)
        self._recording = threading.Lock()
        log.info("kairos ready: model version %s, %d customers in the snapshot, new customers eligible from day %g, "
                 "loaded in %.1f s", version, len(snapshot) if snapshot is not None else 0, config.delay_days,
                 time.perf_counter() - t0)
        threading.Thread(target=_compile, args=(model, version), name="kairos-compile", daemon=True).start()

    def _answer(self, endpoint: str, customers: list[CustomerIn | InvalidItem], record: bool, started: float) -> dict:
        import pandas as pd

        # a recording request reads the contact log, decides and writes in one step: two at once for one customer
        # would both see no contact and both nudge
        with self._recording if record else contextlib.nullcontext():
            now = pd.Timestamp.now(tz="UTC").tz_localize(None)
            results = self.scorer.score(customers, now=now)
            if record:
                late = time.monotonic() - started
                if late > RECORD_BY_S:  # the client may already have its 504 and retry: record nothing
                    log.warning("next_best_action took %.0f s for %d customers; nothing recorded (answered 503)",
                                late, len(customers))
                    from bentoml.exceptions import ServiceUnavailable

                    raise ServiceUnavailable("the request took too long; nothing was recorded, retry with fewer "
                                             "customers")
                self.scorer.record(results, now)
        for item, res in zip(customers, results):
            path = _path(item)
            outcome = "answered" if "error" not in res else ("unknown" if path == "snapshot" else "error")
            CUSTOMERS.labels(endpoint, path, outcome).inc()
            if "error" not in res:
                DECISIONS.labels(endpoint, res["action"], res["channel"] or "none").inc()
        return {"results": results, "model_version": self.scorer.version}

    async def _run(self, endpoint: str, customers: list[CustomerIn | InvalidItem], record: bool) -> dict:
        # snapshot look-ups take well under a millisecond: answer them on the event loop; raw histories
        # (build_features + model) and writes to the contact log go to a thread
        started = time.monotonic()
        if record or any(_path(c) == "raw" for c in customers):
            import anyio

            return await anyio.to_thread.run_sync(self._answer, endpoint, customers, record, started)
        return self._answer(endpoint, customers, record, started)

    @bentoml.api(input_spec=ScoreRequest)
    async def score(self, customers: list[CustomerIn | InvalidItem]) -> dict:
        """Scores and the next best action of each customer (nothing is recorded)."""
        return await self._run("score", customers, record=False)

    @bentoml.api(input_spec=ActionRequest)
    async def next_best_action(self, customers: list[CustomerIn | InvalidItem], record: bool = True) -> dict:
        """The next best action of each customer; nudges are recorded in the contact log unless `record` is false."""
        return await self._run("next_best_action", customers, record=record)


Kairos.add_asgi_middleware(ApiKeyMiddleware)
