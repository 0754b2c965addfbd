"""Start-up of the clinrisk predictor on KServe: ``kserve.ModelServer`` registry and dataplane, the app of
:mod:`clinrisk.serving.app`, uvicorn bound to ``serving.host`` (127.0.0.1 for local runs and tests, 0.0.0.0
in a pod), KServe's gRPC server only if configured.

Only KServe's public API is used (``ModelServer(...)``, ``register_model``, ``dataplane``,
``model_repository_extension``, the endpoint classes, ``GRPCServer``). Error responses are
``{"error": ...}``: 400 malformed JSON / schema violation, 401 missing or wrong token, 404 unknown model or
route, 405 wrong method, 408 body too slow, 413 body too large, 415 non-JSON content type, 422 refused by
policy (out of distribution or dropped values, when configured), 501 explain, 503 model not ready.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from clinrisk.serving.kserve_import import import_kserve

import_kserve()

from kserve import ModelServer  # noqa: E402

from clinrisk.config import ServingConfig  # noqa: E402
from clinrisk.errors import DataError  # noqa: E402
from clinrisk.serving.app import ASGIApp, create_app, load_token  # noqa: E402
from clinrisk.serving.predictor import ClinriskModel  # noqa: E402

log = logging.getLogger("clinrisk.serving")


def model_server(cfg: ServingConfig, model: Any) -> ModelServer:
    """A ``kserve.ModelServer`` holding ``model`` (registry + dataplane; its own ``start`` is not used:
    the app is composed in :mod:`clinrisk.serving.app`)."""
    server = ModelServer(
        http_port=cfg.http_port,
        grpc_port=cfg.grpc_port,
        workers=1,
        enable_grpc=cfg.grpc_enabled,
        enable_docs_url=False,
        enable_latency_logging=False,
    )
    server.register_model(model)
    return server


def build_app(model: ClinriskModel, cfg: ServingConfig, token: bytes | None = None) -> ASGIApp:
    """The app the server runs, serving ``model`` whether or not it is ready (in-process tests)."""
    return create_app(model_server(cfg, model), cfg, token)


def configure_logging() -> None:
    """INFO lines of clinrisk's own loggers on stderr (KServe configures only its own loggers)."""
    root = logging.getLogger("clinrisk")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def startup_record(model: ClinriskModel, cfg: ServingConfig, token: bytes | None) -> dict[str, Any]:
    """What the start-up log line states (no secrets: only whether a token is set)."""
    engine = model.engine
    assert engine is not None
    return {
        "model": cfg.model_name,
        "bundle_version": engine.version,
        "self_check": model.self_check,
        "feature_engine": cfg.feature_engine,
        "ood": engine.ood_method,
        "max_body_bytes": cfg.max_body_bytes,
        "body_timeout_s": cfg.body_timeout_s,
        "max_instances": cfg.max_instances,
        "max_history_years": cfg.max_history_years,
        "auth": "bearer" if token else "off",
        "reject_out_of_distribution": cfg.reject_out_of_distribution,
        "reject_value_warnings": cfg.reject_value_warnings,
        "request_log": bool(cfg.request_log_dir),
        "bind": f"{cfg.host}:{cfg.http_port}",
        "grpc": cfg.grpc_enabled,
    }


def run_http(app: ASGIApp, cfg: ServingConfig, server: ModelServer) -> None:
    """Serve ``app`` with uvicorn on ``serving.host:http_port`` (and KServe's gRPC server if configured)
    until interrupted (blocks)."""
    import uvicorn

    http = uvicorn.Server(
        uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.http_port,
            log_config=None,
            timeout_keep_alive=65,
            timeout_graceful_shutdown=30,
            h11_max_incomplete_event_size=64 * 1024,
        )
    )

    async def run() -> None:
        tasks = [asyncio.ensure_future(http.serve())]
        if cfg.grpc_enabled:
            from kserve.model_server import args as kserve_args
            from kserve.protocol.grpc.server import GRPCServer

            grpc = GRPCServer(
                cfg.grpc_port, server.dataplane, server.model_repository_extension, kwargs=vars(kserve_args)
            )
            tasks.append(asyncio.ensure_future(grpc.start(4)))
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for t in done:
            t.result()

    from clinrisk.interrupts import Interrupted

    try:
        asyncio.run(run())
    except Interrupted as exc:
        # uvicorn drains on SIGINT/SIGTERM, then re-raises the signal (uvicorn.Server.capture_signals): for a
        # server that is its normal stop, not a failure of a step that publishes, so no "error:" line.
        sys.stderr.write(f"serving stopped by {exc.signal_name} (graceful shutdown)\n")
        sys.stderr.flush()
        raise SystemExit(exc.exit_code) from None


def serve(bundle_dir: str | Path, cfg: ServingConfig) -> None:
    """Load + self-check the bundle, then serve until interrupted (blocks)."""
    import json

    configure_logging()
    token = load_token(cfg)
    if token is not None and cfg.grpc_enabled:
        raise DataError(
            "serving.grpc_enabled: the gRPC server has no bearer-token check; disable gRPC or auth"
        )
    model = ClinriskModel(cfg.model_name, bundle_dir, cfg)
    model.load()
    server = model_server(cfg, model)
    app = create_app(server, cfg, token)
    log.info("start-up %s", json.dumps(startup_record(model, cfg, token), sort_keys=True, default=str))
    try:
        run_http(app, cfg, server)
    finally:
        model.stop()
