"""The KServe V1 predictor: a ``kserve.Model`` that scores clinrisk instances with a model bundle.

Readiness: ``ready`` becomes True only in :meth:`ClinriskModel.load`, after the bundle loaded AND passed
its self-check (KServe's default ``start()`` would mark any model ready; it is overridden).

Event loop: ``preprocess`` checks the media type and decodes the body (in a worker thread when it is
larger than ``INLINE_PARSE_BYTES``). Validation of a small request
(pure Python, well under a millisecond) runs on the loop; a large one (more than
``INLINE_VALIDATION_INSTANCES`` instances) goes to the loop's default thread pool. Feature building and
prediction always run in the thread pool, through a :class:`MicroBatcher`: requests that arrive while a
batch is scored are coalesced into the next one (one feature build for all of them, no added wait), so
the loop keeps accepting requests, health checks and metric scrapes, and a 256-instance request cannot
stall the others for longer than its own batch.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinrisk.serving.kserve_import import import_kserve

kserve = import_kserve()

from kserve.errors import ModelNotReady  # noqa: E402

from clinrisk.config import ServingConfig  # noqa: E402
from clinrisk.serving.batching import MicroBatcher  # noqa: E402
from clinrisk.serving.inference import ScoreResult, ServingEngine  # noqa: E402
from clinrisk.serving.metrics import serving_metrics  # noqa: E402
from clinrisk.serving.request import ServingError, ValidatedRequest, decode_body  # noqa: E402

log = logging.getLogger("clinrisk.serving")

# Requests with at most this many instances are validated on the event loop (cheaper than a thread hop).
INLINE_VALIDATION_INSTANCES = 8
# Bodies up to this size are parsed on the event loop (~0.1 ms); larger ones in a worker thread.
INLINE_PARSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class _Decoded:
    """Body after media-type checks (not a dict, so KServe's own V1 ``validate`` leaves it alone)."""

    payload: Any


class ClinriskModel(kserve.Model):  # type: ignore[misc,name-defined]
    """clinrisk predictor; construct, then :meth:`load` (raises on a bad bundle), then serve."""

    def __init__(self, name: str, bundle_dir: str | Path, cfg: ServingConfig) -> None:
        super().__init__(name)
        self.bundle_dir = Path(bundle_dir)
        self.cfg = cfg
        self.engine: ServingEngine | None = None
        self.batcher: MicroBatcher[ValidatedRequest, ScoreResult] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.self_check: dict[str, Any] = {}
        self.ready = False

    def load(self) -> bool:
        """Load the bundle and self-check it; ready only if both succeed (errors propagate)."""
        engine = ServingEngine.from_dir(self.bundle_dir, self.cfg)
        self.self_check = engine.self_check()
        # One scoring thread: batches run one at a time anyway, and the feature plan is cached per
        # thread, so it is built once here (warm-up) instead of on the first request of each pool thread.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clinrisk-score")
        self._executor.submit(engine.warm_up).result()
        self.batcher = MicroBatcher(
            engine.score_many,
            lambda r: r.n_instances,
            max_instances=self.cfg.max_instances,
            executor=self._executor,
        )
        self.engine = engine
        self.ready = True
        log.info(
            "model %s ready: bundle %s, version %s, %d features, threshold %.4f, self-check %s",
            self.name,
            self.bundle_dir,
            engine.version,
            len(engine.bundle.feature_names),
            engine.threshold,
            self.self_check,
        )
        return self.ready

    def start(self) -> None:
        """KServe calls this at start-up; readiness is decided by :meth:`load` alone."""

    def stop(self) -> None:
        """Flush the request log and mark not ready."""
        if self.engine is not None:
            self.engine.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self.ready = False

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        try:
            if isinstance(payload, bytes | bytearray) and len(payload) > INLINE_PARSE_BYTES:
                loop = asyncio.get_running_loop()
                return _Decoded(await loop.run_in_executor(None, decode_body, payload, headers))
            return _Decoded(decode_body(payload, headers))
        except ServingError as exc:
            serving_metrics().observe_rejected(self.name, _outcome(exc), exc.reason)
            raise

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
        engine, batcher = self.engine, self.batcher
        if engine is None or batcher is None:
            raise ModelNotReady(self.name)
        body = payload.payload if isinstance(payload, _Decoded) else payload
        metrics = serving_metrics()
        try:
            if _instance_count(body) <= INLINE_VALIDATION_INSTANCES:
                req = engine.validate(body)
            else:
                req = await asyncio.get_running_loop().run_in_executor(None, engine.validate, body)
            result = await batcher.submit(req)
        except ServingError as exc:
            metrics.observe_rejected(self.name, _outcome(exc), exc.reason)
            if exc.reason == "out_of_distribution":
                metrics.ood_instances.labels(self.name).inc()
            raise
        metrics.observe_success(self.name, result.probabilities, result.ood_features)
        metrics.observe_warnings(self.name, result.warnings)
        if self.cfg.log_patient_data:
            log.info("scored %d instance(s): %s", len(result.probabilities), result.response)
        return result.response


def _instance_count(body: Any) -> int:
    """Number of instances a body claims (0 when it is not even shaped like a V1 request)."""
    inst = body.get("instances") if isinstance(body, dict) else None
    return len(inst) if isinstance(inst, list) else 0


def _outcome(exc: ServingError) -> str:
    if exc.status == 422:
        return "out_of_distribution" if exc.reason == "out_of_distribution" else "unprocessable"
    return {400: "invalid", 415: "unsupported_media_type"}.get(exc.status, "error")
