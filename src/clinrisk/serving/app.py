"""The HTTP application around KServe's dataplane: routes, request limits, authentication, error contract.

Built only from KServe's public API: ``ModelServer`` (model registry, ``dataplane``), the ``V1Endpoints`` /
``V2Endpoints`` handlers, ``metrics_handler`` and ``DataPlane.infer``. KServe's own app composition gives no
way to bound a request body, bind an address or leave out the repository routes, so the app is composed
here (and run by uvicorn, as KServe does):

- ``GET /``, ``/v2/health/live``: liveness (never touches the model, never needs a token);
- ``GET /v2/health/ready``, ``/v1/models/<name>``, ``/v2/models/<name>/ready``: readiness = every model
  ready (KServe's ``/v2/health/ready`` answers ready even with the model unloaded);
- ``POST /v1/models/<name>:predict``: the body is read here, bounded by ``serving.max_body_bytes`` (a
  larger Content-Length is refused before reading; a chunked body is cut off once it grows past it) and
  by ``serving.body_timeout_s``; JSON is parsed in a worker thread when large (see the predictor);
- ``:explain``, other methods on ``:predict``: 501 / 405 in the project's error format;
- V2 inference and the V2 repository (load/unload) routes are not served: 404 ``{"error": ...}``.

With a bearer token configured, every route except liveness, readiness and ``/metrics`` needs
``Authorization: Bearer <token>`` (compared in constant time; failures counted in
``clinrisk_auth_failures``). Every refusal is one INFO line with its status and reason code, never content.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from clinrisk.serving.kserve_import import import_kserve

import_kserve()

import orjson  # noqa: E402
from fastapi import FastAPI, Request, Response  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from kserve import ModelServer  # noqa: E402
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady  # noqa: E402
from kserve.protocol.rest.server import metrics_handler  # noqa: E402
from kserve.protocol.rest.v1_endpoints import V1Endpoints  # noqa: E402
from kserve.protocol.rest.v2_endpoints import V2Endpoints  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from clinrisk.config import ServingConfig  # noqa: E402
from clinrisk.errors import DataError  # noqa: E402
from clinrisk.serving.metrics import serving_metrics  # noqa: E402
from clinrisk.serving.request import ServingError  # noqa: E402

log = logging.getLogger("clinrisk.serving")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Routes a kubelet or Prometheus calls without credentials (no patient data behind them).
OPEN_PATHS = frozenset(("/", "/metrics", "/v2/health/live", "/v2/health/ready"))


class PayloadTooLarge(ServingError):
    """A body past ``serving.max_body_bytes`` (413)."""

    status = 413


class BodyTimeout(ServingError):
    """A body not received within ``serving.body_timeout_s`` (408)."""

    status = 408


def load_token(cfg: ServingConfig) -> bytes | None:
    """The bearer token from ``serving.auth_token_file`` or the ``serving.auth_token_env`` variable."""
    token: str | None = None
    if cfg.auth_token_file:
        path = Path(cfg.auth_token_file)
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise DataError(f"serving.auth_token_file {path}: cannot read ({exc.strerror})") from None
        if not token:
            raise DataError(f"serving.auth_token_file {path}: empty")
    else:
        token = os.environ.get(cfg.auth_token_env, "").strip() or None
    if token is None and cfg.require_auth:
        raise DataError(
            f"serving.require_auth: no token (set serving.auth_token_file or ${cfg.auth_token_env})"
        )
    return token.encode() if token else None


def is_open_path(method: str, path: str) -> bool:
    """Liveness, readiness and metrics routes (no token needed)."""
    if path in OPEN_PATHS:
        return True
    if method not in ("GET", "HEAD"):
        return False
    parts = path.strip("/").split("/")
    # /v1/models/<name> (readiness, no ':' verb) and /v2/models/<name>/ready
    return (len(parts) == 3 and parts[:2] == ["v1", "models"] and ":" not in parts[2]) or (
        len(parts) == 4 and parts[:2] == ["v2", "models"] and parts[3] == "ready"
    )


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return bytes(v)
    return None


async def _send_error(send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    body = orjson.dumps({"error": message})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware run before any routing: bearer token and the declared body size.

    Both refusals are answered at once without reading the body (``Connection: close``: the server drops
    whatever the client still sends instead of buffering it)."""

    def __init__(self, app: ASGIApp, *, token: bytes | None, max_body_bytes: int, model_name: str) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.model_name = model_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.token is not None and not is_open_path(scope["method"], scope["path"]):
            reason = self._auth_failure(_header(scope, b"authorization"))
            if reason is not None:
                serving_metrics().auth_failures.labels(self.model_name, reason).inc()
                log.info("rejected request: status=401 reason=%s", reason)
                await _send_error(
                    send,
                    401,
                    "unauthorized: send Authorization: Bearer <token>",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                n = -1
            if n < 0:
                self._count_rejected("invalid", "bad_content_length", 400)
                await _send_error(send, 400, "malformed Content-Length header")
                return
            if n > self.max_body_bytes:
                self._count_rejected("too_large", "body_too_large", 413)
                await _send_error(send, 413, f"request body too large (limit {self.max_body_bytes} bytes)")
                return
        await self.app(scope, receive, send)

    def _auth_failure(self, header: bytes | None) -> str | None:
        assert self.token is not None
        if header is None:
            return "missing_token"
        scheme, _, presented = header.partition(b" ")
        if scheme.lower() != b"bearer" or not presented:
            return "malformed_token"
        # Constant time: the comparison does not leak how much of the token matched.
        return None if hmac.compare_digest(presented.strip(), self.token) else "wrong_token"

    def _count_rejected(self, outcome: str, reason: str, status: int) -> None:
        serving_metrics().observe_rejected(self.model_name, outcome, reason)
        log.info("rejected request: status=%d reason=%s", status, reason)


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, at most ``limit`` bytes, within ``timeout_s`` (413 / 408 otherwise)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(
                        f"request body too large (limit {limit} bytes)", reason="body_too_large"
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(
            f"request body not received within {timeout_s:g} s", reason="body_timeout"
        ) from None
    return b"".join(chunks)


def _outcome(status: int) -> str:
    return {
        400: "invalid",
        408: "timeout",
        413: "too_large",
        415: "unsupported_media_type",
        422: "unprocessable",
    }.get(status, "error")


def install_error_handlers(app: FastAPI, model_name: str) -> None:
    """The clinrisk error contract: ``{"error": ...}``, one INFO line per refusal, no content, no traceback."""
    metrics = serving_metrics()

    async def serving_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServingError)
        # Counted where raised when the model saw it; the transport-level ones (408/413) are counted here.
        if isinstance(exc, PayloadTooLarge | BodyTimeout):
            metrics.observe_rejected(model_name, _outcome(exc.status), exc.reason)
        log.info("rejected request: status=%d reason=%s", exc.status, exc.reason)
        headers = {"connection": "close"} if exc.status in (408, 413) else None
        return JSONResponse(status_code=exc.status, content={"error": str(exc)}, headers=headers)

    async def invalid_input(_: Request, exc: Exception) -> JSONResponse:
        metrics.observe_rejected(model_name, "invalid", "malformed_json")
        log.info("rejected request: status=400 reason=malformed_json")
        return JSONResponse(status_code=400, content={"error": f"malformed JSON body: {exc}"})

    async def not_found(_: Request, exc: Exception) -> JSONResponse:
        metrics.requests.labels(model_name, "model_not_found").inc()
        log.info("rejected request: status=404 reason=model_not_found")
        return JSONResponse(status_code=404, content={"error": str(exc)})

    async def not_ready(_: Request, exc: Exception) -> JSONResponse:
        metrics.requests.labels(model_name, "model_not_ready").inc()
        log.info("rejected request: status=503 reason=model_not_ready")
        return JSONResponse(status_code=503, content={"error": str(exc)})

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        reason = {404: "no_route", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        log.info("rejected request: status=%d reason=%s", exc.status_code, reason)
        message = {
            404: "no such route (served: GET /v1/models/<name>, POST /v1/models/<name>:predict)",
            405: "method not allowed",
        }.get(exc.status_code, str(exc.detail))
        return JSONResponse(status_code=exc.status_code, content={"error": message}, headers=exc.headers)

    async def request_validation(_: Request, exc: Exception) -> JSONResponse:
        # FastAPI's default 422 echoes the request (patient data); name the location only.
        assert isinstance(exc, RequestValidationError)
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()[:5])
        log.info("rejected request: status=422 reason=request_shape")
        return JSONResponse(status_code=422, content={"error": f"request does not match the route: {where}"})

    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(InvalidInput, invalid_input)
    app.add_exception_handler(ModelNotFound, not_found)
    app.add_exception_handler(ModelNotReady, not_ready)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, request_validation)


def create_app(server: ModelServer, cfg: ServingConfig, token: bytes | None) -> ASGIApp:
    """The ASGI app serving ``server``'s registered models (see module doc)."""
    dataplane = server.dataplane
    v1 = V1Endpoints(dataplane, server.model_repository_extension)
    v2 = V2Endpoints(dataplane, server.model_repository_extension)
    app = FastAPI(
        title="clinrisk KServe ModelServer",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    async def all_ready() -> dict[str, bool]:
        for name in dataplane.model_registry.get_models():
            if not await dataplane.model_ready(name):
                raise ModelNotReady(name)
        return {"ready": True}

    async def predict(model_name: str, request: Request) -> Response:
        if not await dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)
        body = await read_body(request, cfg.max_body_bytes, cfg.body_timeout_s)
        headers = dict(request.headers.items())
        response, response_headers = await dataplane.infer(
            model_name=model_name, request=body, headers=headers
        )
        response_headers.pop("content-length", None)
        return Response(orjson.dumps(response), media_type="application/json", headers=response_headers)

    async def explain(model_name: str) -> JSONResponse:
        await dataplane.get_model(model_name)  # 404 for an unknown model
        log.info("rejected request: status=501 reason=explain_not_served")
        return JSONResponse(
            status_code=501,
            content={"error": "explain is not served: ask :predict with parameters.reason_codes_top_k"},
        )

    async def wrong_method(request: Request) -> JSONResponse:
        log.info("rejected request: status=405 reason=method_not_allowed")
        return JSONResponse(
            status_code=405, content={"error": "method not allowed: use POST"}, headers={"allow": "POST"}
        )

    other = ["GET", "PUT", "DELETE", "PATCH"]
    app.add_api_route("/", dataplane.live, methods=["GET"])
    app.add_api_route("/metrics", metrics_handler, methods=["GET"])
    app.add_api_route("/v2/health/live", v2.live, methods=["GET"])
    app.add_api_route("/v2/health/ready", all_ready, methods=["GET"])
    # Verb routes before GET /v1/models/{model_name}, which would read "clinrisk:predict" as a model name.
    app.add_api_route("/v1/models/{model_name}:predict", predict, methods=["POST"], response_model=None)
    app.add_api_route("/v1/models/{model_name}:predict", wrong_method, methods=other)
    app.add_api_route("/v1/models/{model_name}:explain", explain, methods=["POST"])
    app.add_api_route("/v1/models/{model_name}:explain", wrong_method, methods=other)
    app.add_api_route("/v1/models", v1.models, methods=["GET"])
    app.add_api_route("/v1/models/{model_name}", v1.model_ready, methods=["GET"])
    app.add_api_route("/v2/models/{model_name}/ready", v2.model_ready, methods=["GET"])
    install_error_handlers(app, cfg.model_name)
    return RequestGuard(app, token=token, max_body_bytes=cfg.max_body_bytes, model_name=cfg.model_name)
