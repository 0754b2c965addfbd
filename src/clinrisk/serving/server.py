"""Start-up of the real ``kserve.ModelServer`` for the clinrisk predictor, and the error contract.

KServe's REST server always binds 0.0.0.0; :class:`ClinriskRESTServer` binds ``serving.host`` instead
(127.0.0.1 for local runs and tests, 0.0.0.0 in a pod). Error responses are ``{"error": ...}`` with:
400 malformed JSON / schema violation, 415 non-JSON content type, 422 out of distribution (when
configured to reject), 404 unknown model, 503 model not ready. The handlers below replace KServe's for
those cases so that every refusal is counted and none logs a traceback or request content.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from clinrisk.serving.kserve_import import import_kserve

import_kserve()

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, ORJSONResponse  # noqa: E402
from kserve import ModelServer  # noqa: E402
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING  # noqa: E402
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady  # noqa: E402
from kserve.protocol.rest.server import RESTServer  # noqa: E402

from clinrisk.config import ServingConfig  # noqa: E402
from clinrisk.serving.metrics import serving_metrics  # noqa: E402
from clinrisk.serving.predictor import ClinriskModel  # noqa: E402
from clinrisk.serving.request import ServingError  # noqa: E402

log = logging.getLogger("clinrisk.serving")


def install_error_handlers(app: FastAPI, model_name: str) -> None:
    """Register the clinrisk error contract on a KServe FastAPI app (after KServe's own handlers)."""
    metrics = serving_metrics()

    async def serving_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServingError)
        # Counted where raised (the model knows its name); log the category only, never the content.
        log.info("rejected request: status=%d reason=%s", exc.status, exc.reason)
        return JSONResponse(status_code=exc.status, content={"error": str(exc)})

    async def invalid_input(_: Request, exc: Exception) -> JSONResponse:
        # Raised by KServe's dataplane before the model: the body was not parseable JSON.
        metrics.observe_rejected(model_name, "invalid", "malformed_json")
        log.info("rejected request: status=400 reason=malformed_json")
        return JSONResponse(status_code=400, content={"error": f"malformed JSON body: {exc}"})

    async def not_found(_: Request, exc: Exception) -> JSONResponse:
        metrics.requests.labels(model_name, "model_not_found").inc()
        return JSONResponse(status_code=404, content={"error": str(exc)})

    async def not_ready(_: Request, exc: Exception) -> JSONResponse:
        metrics.requests.labels(model_name, "model_not_ready").inc()
        return JSONResponse(status_code=503, content={"error": str(exc)})

    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(InvalidInput, invalid_input)
    app.add_exception_handler(ModelNotFound, not_found)
    app.add_exception_handler(ModelNotReady, not_ready)


class ClinriskRESTServer(RESTServer):  # type: ignore[misc]
    """KServe's REST server with a configurable bind address and the clinrisk error contract."""

    def __init__(self, *args: Any, host: str, model_name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = host
        self.model_name = model_name

    def _add_exception_handlers(self, app: FastAPI) -> None:
        super()._add_exception_handlers(app)
        install_error_handlers(app, self.model_name)


class ClinriskModelServer(ModelServer):  # type: ignore[misc]
    """``kserve.ModelServer`` (one uvicorn worker) serving on ``cfg.host``; gRPC only if configured."""

    def __init__(self, cfg: ServingConfig) -> None:
        super().__init__(
            http_port=cfg.http_port,
            grpc_port=cfg.grpc_port,
            workers=1,
            enable_grpc=cfg.grpc_enabled,
            enable_docs_url=False,
            enable_latency_logging=True,
        )
        self.cfg = cfg

    def rest_server(self) -> ClinriskRESTServer:
        """The REST server object (KServe's, subclassed) for this model server."""
        return ClinriskRESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=self.access_log_format,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
            host=self.cfg.host,
            model_name=self.cfg.model_name,
        )

    def start(self, models: list[Any]) -> None:
        """As ``ModelServer.start`` for one worker, with :class:`ClinriskRESTServer` (blocks)."""
        import asyncio

        from kserve.protocol.grpc.server import GRPCServer

        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = self.rest_server()
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            from kserve.model_server import args as kserve_args

            self._grpc_server = GRPCServer(
                self.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                kwargs=vars(kserve_args),
                grace_period=self.grace_period,
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def build_app(model: ClinriskModel, cfg: ServingConfig) -> FastAPI:
    """A fresh KServe FastAPI app (same routes, middleware and handlers as the real server) serving
    ``model`` whether or not it is ready - for in-process tests (FastAPI TestClient)."""
    server = ClinriskModelServer(cfg)
    server.register_model(model)
    rest = server.rest_server()
    app = FastAPI(
        title="KServe ModelServer", docs_url=None, redoc_url=None, default_response_class=ORJSONResponse
    )
    rest._add_middlewares(app)
    rest._register_endpoints(app)
    rest._add_exception_handlers(app)
    return app


def serve(bundle_dir: str | Path, cfg: ServingConfig) -> None:
    """Load + self-check the bundle, then run the model server until interrupted (blocks)."""
    model = ClinriskModel(cfg.model_name, bundle_dir, cfg)
    model.load()
    log.info(
        "serving %s on http://%s:%d (gRPC %s)", cfg.model_name, cfg.host, cfg.http_port, cfg.grpc_enabled
    )
    ClinriskModelServer(cfg).start([model])
