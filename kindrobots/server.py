"""The aiohttp application: GraphQL over HTTP and WebSocket, health, JWKS."""

from __future__ import annotations

import dataclasses
import hmac
import logging
import weakref
from datetime import timedelta
from typing import Any

from aiohttp import WSCloseCode, web, web_response
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import GraphQLError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from strawberry.aiohttp.views import GraphQLView
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.http.base import BaseRequestProtocol
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from kindrobots.auth.principals import UserActor, WidgetActor
from kindrobots.auth.tokens import TokenSigner
from kindrobots.auth.widgets import WidgetRejected, authenticate_widget
from kindrobots.billing.stripe_client import StripeGateway
from kindrobots.broker.memory import MemoryBroker
from kindrobots.broker.redis import RedisBroker
from kindrobots.config import Settings
from kindrobots.context import Cookie, RequestContext, Services
from kindrobots.db.engine import create_engine, create_sessionmaker
from kindrobots.errors import PublicError, ServiceUnavailable
from kindrobots.schema import build_schema
from kindrobots.schema.callers import identify
from kindrobots.security.client_ip import client_ip
from kindrobots.security.connections import ConnectionLimits, Slot
from kindrobots.security.cors import CorsPolicy, project_origins, setup_cors
from kindrobots.security.crypto import KeyRing
from kindrobots.security.documents import (
    PERSISTED_QUERY_NOT_FOUND,
    PERSISTED_QUERY_NOT_FOUND_MESSAGE,
    DocumentRefused,
    PersistedQueryNotFound,
)
from kindrobots.security.errors import public_failure
from kindrobots.security.jwks import JwksCache
from kindrobots.security.operation_limits import MAX_DOCUMENT_CHARS
from kindrobots.security.ratelimit import MemoryLimiter, RedisLimiter
from kindrobots.security.transport import setup_transport, ssl_context_for
from kindrobots.webhooks import add_webhook_routes
from kindrobots.widget import add_widget_routes

logger = logging.getLogger("kindrobots.server")

# aiohttp names itself and Python, with versions, in a `Server` header. Routed responses
# lose the header (`_response_headers`); the few aiohttp answers before any routing (a
# malformed request line, headers too long) say this instead.
setattr(web_response, "SERVER_SOFTWARE", "kindrobots")  # noqa: B010 (not exported)

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
WEBSOCKETS: web.AppKey[weakref.WeakSet[web.WebSocketResponse]] = web.AppKey(
    "websockets", weakref.WeakSet
)
CSRF_HEADERS = ("X-Requested-With", "Apollo-Require-Preflight")
# Apollo Server's CSRF prevention: a GET is safe when it cannot be a simple request, i.e.
# it carries one of these headers (non-empty) or a content type a form cannot send.
GET_PREFLIGHT_HEADERS = ("Apollo-Require-Preflight", "X-Apollo-Operation-Name")
SIMPLE_CONTENT_TYPES = frozenset(
    ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
)
SESSION_COOKIES = ("kr_access", "kr_refresh")
GRAPHQL_PATH = "/graphql"
# The code of request errors (bad JSON, no query, wrong method, body too large, batching
# off): API.md's list has no code for a request that never became an operation.
BAD_REQUEST = "BAD_REQUEST"
CONNECTION: web.RequestKey[Slot] = web.RequestKey("connection_slot", Slot)
DOCUMENT_TOO_LARGE: web.RequestKey[bool] = web.RequestKey("document_too_large", bool)
REQUEST_ERROR: web.RequestKey[bool] = web.RequestKey("graphql_request_error", bool)
MUTATION_OVER_GET: web.RequestKey[bool] = web.RequestKey("graphql_mutation_over_get", bool)
# Apollo's APQ miss: an error result, but status 200 as Apollo Server answers it.
PERSISTED_MISS: web.RequestKey[bool] = web.RequestKey("graphql_persisted_miss", bool)
SUBSCRIPTION_OVER_HTTP = (
    "Subscriptions are served over WebSocket only: connect to /graphql with the "
    "graphql-transport-ws protocol."
)
RETRY_AFTER: web.RequestKey[int] = web.RequestKey("graphql_retry_after", int)
UNAVAILABLE: web.RequestKey[bool] = web.RequestKey("graphql_unavailable", bool)
WEBSOCKET: web.RequestKey[web.WebSocketResponse] = web.RequestKey(
    "graphql_websocket", web.WebSocketResponse
)


def _bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def _csrf_safe(request: web.Request) -> bool:
    """A cookie-carrying POST must be one that a cross-site form cannot send."""
    if request.method != "POST":
        return True
    if request.content_type == "application/json":
        return True
    return any(request.headers.get(name, "").strip() for name in CSRF_HEADERS)


def _get_csrf_safe(request: web.Request) -> bool:
    """A cookie-carrying GET must be one that a cross-site page cannot trigger."""
    if not any(request.cookies.get(name) for name in SESSION_COOKIES):
        return True
    if any(request.headers.get(name, "").strip() for name in GET_PREFLIGHT_HEADERS):
        return True
    content_type = request.headers.get("Content-Type")
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() not in SIMPLE_CONTENT_TYPES


def _error_code(status: int) -> str:
    return {403: "FORBIDDEN", 404: "NOT_FOUND"}.get(status, BAD_REQUEST)


def request_error(
    status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """API.md, Errors: a request error is JSON in the error shape, with a 4xx status."""
    return web.json_response(
        {"errors": [{"message": message, "extensions": {"code": code or _error_code(status)}}]},
        status=status,
        headers=headers,
    )


def failure_response(error: PublicError) -> web.Response:
    """A request that failed before (or outside) any operation, in the error shape:
    503 with Retry-After when a backing service is down, else 500 with an errorId."""
    unavailable = isinstance(error, ServiceUnavailable)
    return web.json_response(
        {"errors": [{"message": error.message, "extensions": error.extensions}]},
        status=503 if unavailable else 500,
        headers={"Retry-After": str(ServiceUnavailable.retry_after)} if unavailable else None,
    )


def _aiohttp_error_message(error: web.HTTPException) -> str:
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return "The request body is too large."
    if isinstance(error, web.HTTPMethodNotAllowed):
        return "GraphQL over HTTP takes GET (queries) and POST only."
    return error.reason


@web.middleware
async def graphql_request_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals on /graphql (413 past ``client_max_size``, 405 for another
    method) are request errors too: JSON, never ``text/plain``."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if request.path != GRAPHQL_PATH or error.status < 400:
            raise
        headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        return request_error(error.status, _aiohttp_error_message(error), headers=headers)


async def _response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """No ``Server`` header naming aiohttp and Python versions, on any response; GraphQL
    answers are per caller and never cached."""
    response.headers.popall("Server", None)
    if request.path == GRAPHQL_PATH and not isinstance(response, web.WebSocketResponse):
        response.headers.setdefault("Cache-Control", "no-store")


def _apply_cookies(response: web.StreamResponse, settings: Settings, cookies: list[Cookie]) -> None:
    for cookie in cookies:
        response.set_cookie(
            cookie.name,
            cookie.value,
            max_age=cookie.max_age,
            path=cookie.path,
            httponly=True,
            secure=settings.secure_cookies,
            samesite=cookie.same_site,
        )


class TransportWSHandler(BaseGraphQLTransportWSHandler[RequestContext, None]):
    """Strawberry's graphql-transport-ws handler, lighter on idle connections."""

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        await super().handle_connection_init(message)
        # The timeout task is cancelled by now; kept, it would hold its cancellation and
        # traceback for as long as the connection stays open (idle widgets: hours).
        self.connection_init_timeout_task = None


class KindRobotsGraphQLView(GraphQLView[RequestContext, None]):
    graphql_transport_ws_handler_class = TransportWSHandler

    def __init__(self, services: Services) -> None:
        settings = services.settings
        schema = build_schema(settings)
        self.documents = schema.documents
        super().__init__(
            schema=schema,
            graphql_ide=None if settings.is_production else "graphiql",
            connection_init_wait_timeout=timedelta(seconds=10),
            max_subscriptions_per_connection=settings.ws_max_subscriptions,
        )
        self.services = services
        self.connections = ConnectionLimits(
            ip=settings.ws_max_per_ip, project=settings.ws_max_per_project
        )

    async def get_context(
        self, request: web.Request, response: web.Response | web.WebSocketResponse
    ) -> RequestContext:
        settings = self.services.settings
        context = RequestContext(
            services=self.services,
            ip=client_ip(request, settings.trusted_proxies),
            user_agent=request.headers.get("User-Agent"),
        )
        context.origin = request.headers.get("Origin")
        bearer = _bearer(request.headers.get("Authorization"))
        websocket = isinstance(response, web.WebSocketResponse)
        if isinstance(response, web.WebSocketResponse):
            context.close_connection = response.close
            context.connection_slot = request.get(CONNECTION)
        project_key = request.headers.get("X-Project-Key")
        if project_key is not None and not websocket:
            # The external chat API: the bearer token, if any, is the end user's, not a session.
            await self._widget(context, project_key, bearer, browser_only=False)
            return context
        if bearer:
            context.access_token, context.auth_source = bearer, "bearer"
        elif request.cookies.get("kr_access") or request.cookies.get("kr_refresh"):
            if not (websocket or _csrf_safe(request)):
                raise HTTPException(
                    403,
                    "Cookie-authenticated POSTs need Content-Type: application/json "
                    "or an X-Requested-With header.",
                )
            context.access_token = request.cookies.get("kr_access") or None
            context.auth_source = "cookie" if context.access_token else None
        if not websocket:
            context.refresh_cookie = request.cookies.get("kr_refresh") or None
            context.cookie_sink = lambda cookies: _apply_cookies(response, settings, cookies)
        return context

    async def _widget(
        self, context: RequestContext, project_key: object, token: str | None, *, browser_only: bool
    ) -> WidgetActor | None:
        """Authenticate a widget into ``context.caller``, or keep its refusal."""
        try:
            actor = await authenticate_widget(
                self.services.read,
                self.services.jwks,
                project_key=project_key,
                origin=context.origin,
                token=token,
                browser_only=browser_only,
            )
        except WidgetRejected as rejected:
            # The reason names the failed check, never the key or token themselves.
            logger.info("widget refused from %s: %s", context.ip, rejected.reason)
            context.widget_refusal = rejected
            return None
        context.caller = dataclasses.replace(actor, ip=context.ip)
        return context.caller

    def is_websocket_origin_allowed(self, request: web.Request, origin: str) -> bool:
        """Decided at connection_init: widgets by their project, the dashboard by its origins."""
        return True

    def _dashboard_origin(self, context: RequestContext) -> bool:
        origin = context.origin
        if origin is None:
            return True  # not a browser: it carries no ambient credentials to abuse
        public = self.services.settings.public_url
        return origin in self.services.settings.dashboard_origins or origin == public

    async def on_ws_connect(self, context: RequestContext) -> dict[str, object] | None:
        """``connection_init``; a failure closes the socket with a code, never drops it:
        1013 (try again later) when a backing service is down, else 1011."""
        try:
            return await self._ws_connect(context)
        except ConnectionRejectionError:
            raise
        except Exception as error:  # classified and logged by public_failure
            failure = public_failure(error, "connection_init")
            unavailable = isinstance(failure, ServiceUnavailable)
            if context.close_connection is not None:
                await context.close_connection(
                    code=WSCloseCode.TRY_AGAIN_LATER if unavailable else WSCloseCode.INTERNAL_ERROR,
                    message=b"Try again later" if unavailable else b"Internal error",
                )
            raise ConnectionRejectionError() from None

    async def _ws_connect(self, context: RequestContext) -> dict[str, object] | None:
        params = context.connection_params or {}
        if "projectKey" in params:
            token = params.get("token")
            caller = await self._widget(
                context,
                params["projectKey"],
                token if isinstance(token, str) else None,
                # API.md: a client without an Origin (not a browser) is treated like
                # sendMessage; an Origin that is present must match the project's.
                browser_only=False,
            )
            if caller is None:
                refusal = context.widget_refusal
                assert refusal is not None
                if context.close_connection is not None:
                    # Names the failed check (never the key or token), within 123 bytes.
                    await context.close_connection(
                        code=refusal.close_code, message=refusal.close_reason()
                    )
                raise ConnectionRejectionError()
            slot = context.connection_slot
            if slot is not None and not self.connections.claim(slot, "project", caller.project_id):
                logger.warning("too many connections for project %s", caller.project_id)
                if context.close_connection is not None:
                    await context.close_connection(code=4429, message=b"Too many connections")
                raise ConnectionRejectionError()
            # The origin was checked against the project, not the dashboard: a session cookie
            # the browser sent along must not turn a customer's page into the dashboard.
            context.access_token = context.auth_source = None
            return None
        if not self._dashboard_origin(context):
            logger.info("dashboard connection refused from origin %r", context.origin)
            raise ConnectionRejectionError()
        headers = params.get("headers")  # Hasura/Apollo style: {"headers": {"Authorization": …}}
        nested = (
            (headers.get("Authorization") or headers.get("authorization"))
            if isinstance(headers, dict)
            else None
        )
        token = _bearer(
            str(params.get("authorization") or params.get("Authorization") or nested or "")
        )
        token = token or (
            params.get("accessToken") if isinstance(params.get("accessToken"), str) else None
        )
        if token:
            context.access_token, context.auth_source = token, "connection"
            # Refuse a token that is forged, expired or whose session was signed out.
            await identify(context)
            if not isinstance(context.caller, UserActor):
                raise ConnectionRejectionError()
        return None

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """Count the connection against its address for as long as it stays open."""
        slot = Slot()
        ip = client_ip(request, self.services.settings.trusted_proxies)
        if not self.connections.claim(slot, "ip", ip):
            return web.json_response(
                {"errors": [{"message": "Too many connections from this address."}]},
                status=429,
                headers={"Retry-After": "30"},
            )
        request[CONNECTION] = slot
        try:
            return await super().__call__(request)
        except Exception as error:  # classified and logged by public_failure
            # Past connection_init (which closes by itself): still a close frame, never a
            # dropped socket, and aiohttp's text/plain 500 for a handshake that failed.
            failure = public_failure(error, "websocket")
            websocket: web.WebSocketResponse | None = request.get(WEBSOCKET)
            if websocket is None or not websocket.prepared:
                return failure_response(failure)
            unavailable = isinstance(failure, ServiceUnavailable)
            await websocket.close(
                code=WSCloseCode.TRY_AGAIN_LATER if unavailable else WSCloseCode.INTERNAL_ERROR,
                message=b"Try again later" if unavailable else b"Internal error",
            )
            return websocket
        finally:
            self.connections.release(slot)

    async def create_websocket_response(
        self, request: web.Request, subprotocol: str | None
    ) -> web.WebSocketResponse:
        websocket = await super().create_websocket_response(request, subprotocol)
        request.app[WEBSOCKETS].add(websocket)
        request[WEBSOCKET] = websocket
        return websocket

    def should_render_graphql_ide(self, request: BaseRequestProtocol) -> bool:
        """A GET with a persisted query's hash (and no document) is an operation, not a
        browser asking for GraphiQL."""
        if "extensions" in request.query_params:
            return False
        return super().should_render_graphql_ide(request)

    def parse_json(self, data: str | bytes) -> object:
        """A body that is JSON but neither an object nor a batch is the client's mistake."""
        try:
            parsed = super().parse_json(data)
        except RecursionError:
            # `[[[[…` nested past the interpreter's limit: still the client's mistake.
            raise HTTPException(400, "The request body is nested too deeply.") from None
        if not isinstance(parsed, dict | list):
            raise HTTPException(400, "The request body must be a JSON object.")
        return parsed

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        data = await super().parse_http_body(request)
        # Refused by the operation limits with GRAPHQL_VALIDATION_FAILED; over HTTP the
        # status says so too, whatever the client accepts.
        if any(
            item.query is not None and len(item.query) > MAX_DOCUMENT_CHARS
            for item in (data if isinstance(data, list) else [data])
        ):
            raw = getattr(request, "request", None)
            if isinstance(raw, web.Request):
                raw[DOCUMENT_TOO_LARGE] = True
        return data

    async def execute_single(
        self,
        request: web.Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: web.Response,
        context: RequestContext,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        # Strawberry admits subscriptions over POST and GET and then resolves the field as if
        # it were a query (`Cannot return null …`, an INTERNAL_SERVER_ERROR, no permission
        # run). Subscriptions are served over WebSocket only: that is where connections are
        # counted, limited and closed on containment (sign-out, rotated key, suspension).
        allowed = OperationType.from_http(request_adapter.method) - {OperationType.SUBSCRIPTION}
        if not self.allow_queries_via_get and request_adapter.method == "GET":
            allowed = allowed - {OperationType.QUERY}
        try:
            query = self.documents.resolve(request_data.query, request_data.extensions)
        except DocumentRefused as refused:
            raise HTTPException(400, refused.message) from None
        except PersistedQueryNotFound:
            request[PERSISTED_MISS] = True
            return ExecutionResult(
                data=None,
                errors=[
                    GraphQLError(
                        PERSISTED_QUERY_NOT_FOUND_MESSAGE,
                        extensions={"code": PERSISTED_QUERY_NOT_FOUND},
                    )
                ],
            )
        try:
            return await self.schema.execute(
                query,
                root_value=root_value,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=request_data.extensions,
            )
        except CannotGetOperationTypeError as error:
            raise HTTPException(400, error.as_http_error_reason()) from error
        except MissingQueryError as error:
            raise HTTPException(400, "No GraphQL query found in the request") from error
        except InvalidOperationTypeError as error:
            if error.operation_type == OperationType.SUBSCRIPTION:
                raise HTTPException(400, SUBSCRIPTION_OVER_HTTP) from error
            if error.operation_type == OperationType.MUTATION and request_adapter.method == "GET":
                # API.md: a mutation over GET is 405 with Allow: POST.
                request[MUTATION_OVER_GET] = True
                raise HTTPException(405, "Mutations are only accepted over POST.") from error
            raise HTTPException(400, error.as_http_error_reason(request_adapter.method)) from error

    async def process_result(
        self, request: web.Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        # A result without data whose errors have no path never executed: a request error.
        never_executed = result.data is None and all(
            not error.path for error in result.errors or ()
        )
        if never_executed:
            request[REQUEST_ERROR] = True
        # API.md, Errors: RATE_LIMITED over HTTP is also status 429 with a Retry-After header
        # -- when nothing else was done: a reply whose other fields ran must reach the client.
        executed = isinstance(result.data, dict) and any(
            value is not None for value in result.data.values()
        )
        for error in () if executed else result.errors or ():
            extensions = error.extensions or {}
            if extensions.get("code") == "RATE_LIMITED":
                request[RETRY_AFTER] = int(extensions.get("retryAfter") or 1)
            elif extensions.get("code") == "SERVICE_UNAVAILABLE":
                request[UNAVAILABLE] = True
        processed = await super().process_result(request, result)
        if never_executed and GRAPHQL_RESPONSE_JSON in request.headers.get("Accept", ""):
            # GraphQL over HTTP: a document that fails to parse or validate has no `data`.
            processed.pop("data", None)
        return processed

    async def _http(self, request: web.Request) -> web.StreamResponse:
        """Strawberry's request errors (HTTPException) answered as JSON, never text/plain."""
        if (
            self.services.settings.is_production
            and request.method == "GET"
            and not _get_csrf_safe(request)
        ):
            return request_error(
                403,
                "Cookie-authenticated GET requests need an Apollo-Require-Preflight or "
                "X-Apollo-Operation-Name header, or a non-simple Content-Type.",
            )
        try:
            return await self.run(request=request)
        except HTTPException as error:
            if request.get(MUTATION_OVER_GET):
                return request_error(405, error.reason, headers={"Allow": "POST"})
            return request_error(error.status_code, error.reason)
        except web.HTTPException:
            raise  # aiohttp's own refusals: graphql_request_errors answers them
        except Exception as error:  # classified and logged by public_failure
            # Raised outside any operation (building the context, authenticating a widget):
            # Strawberry would let it through as aiohttp's text/plain 500.
            return failure_response(public_failure(error, f"{request.method} {request.path}"))

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if self.is_websocket_request(request):
            return await self._websocket(request)
        response = await self._http(request)
        if (
            isinstance(response, web.Response)
            and response.content_type == "application/json"
            and GRAPHQL_RESPONSE_JSON in request.headers.get("Accept", "")
        ):
            # GraphQL over HTTP: with the new media type, request errors are 4xx.
            response.content_type = GRAPHQL_RESPONSE_JSON
            if request.get(REQUEST_ERROR) and not request.get(PERSISTED_MISS):
                response.set_status(400)
        if isinstance(response, web.Response) and request.get(DOCUMENT_TOO_LARGE):
            response.set_status(413)
        retry_after = request.get(RETRY_AFTER)
        if isinstance(response, web.Response) and retry_after is not None:
            response.set_status(429)
            response.headers["Retry-After"] = str(retry_after)
        if isinstance(response, web.Response) and request.get(UNAVAILABLE):
            # API.md, Errors: SERVICE_UNAVAILABLE over HTTP is 503 with Retry-After.
            response.set_status(503)
            response.headers["Retry-After"] = str(ServiceUnavailable.retry_after)
        return response


class AccessLogger(AbstractAccessLogger):
    """Method, path and status only: query strings may carry GraphQL variables."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %s %.1fms",
            request.remote,
            request.method,
            request.path,
            response.status,
            time * 1000,
        )


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    checks: dict[str, str] = {}
    try:
        async with services.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:
        logger.warning("readiness: database unreachable", exc_info=True)
        checks["database"] = "unavailable"
    if services.redis is not None:
        try:
            await services.redis.ping()
            checks["redis"] = "ok"
        except Exception:
            logger.warning("readiness: redis unreachable", exc_info=True)
            checks["redis"] = "unavailable"
    ready = all(value == "ok" for value in checks.values())
    return web.json_response(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics: with KR_METRICS_TOKEN for that bearer token, else loopback only."""
    settings = request.app[SERVICES].settings
    if settings.metrics_token:
        allowed = hmac.compare_digest(
            request.headers.get("Authorization", ""), f"Bearer {settings.metrics_token}"
        )
    else:
        # Behind a proxy on the same host every caller looks local: production needs the token.
        allowed = not settings.is_production and request.remote in ("127.0.0.1", "::1")
    if not allowed:
        raise web.HTTPNotFound()
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def jwks(request: web.Request) -> web.Response:
    return web.json_response(
        request.app[SERVICES].signer.jwks(), headers={"Cache-Control": "public, max-age=300"}
    )


def create_services(settings: Settings) -> Services:
    engine = create_engine(settings)
    redis = None
    if settings.redis_url:
        from redis.asyncio import BlockingConnectionPool, Redis

        pool = BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=5,  # seconds to wait for a free connection before the call fails
            socket_timeout=2,
            socket_connect_timeout=2,
        )
        redis = Redis.from_pool(pool)
    return Services(
        settings=settings,
        engine=engine,
        sessionmaker=create_sessionmaker(engine),
        writer=create_sessionmaker(engine, write=True, audit_key=settings.audit_key),
        signer=TokenSigner(
            settings.signing_keys,
            issuer=settings.public_url,
            ttl=timedelta(seconds=settings.access_token_ttl),
        ),
        keyring=KeyRing(settings.encryption_keys),
        feeds=ConnectionLimits(
            user=settings.max_feeds_per_user, organization=settings.max_feeds_per_organization
        ),
        broker=(
            RedisBroker(redis, reconnect_deadline=settings.broker_reconnect_deadline)
            if redis is not None
            else MemoryBroker()
        ),
        limiter=(
            RedisLimiter(redis, settings.rate_limit_failure)
            if redis is not None
            else MemoryLimiter()
        ),
        jwks=JwksCache(settings.outbound_allow, https_only=settings.is_production),
        redis=redis,
        stripe=StripeGateway(settings) if settings.billing_enabled else None,
    )


async def _close_websockets(app: web.Application) -> None:
    websockets = app[WEBSOCKETS]
    for websocket in [*websockets]:
        await websocket.close(code=WSCloseCode.GOING_AWAY, message=b"Server shutting down")


async def _close_services(app: web.Application) -> None:
    services = app[SERVICES]
    await services.broker.close()
    if services.stripe is not None:
        await services.stripe.close()
    if services.redis is not None:
        await services.redis.aclose()
    await services.engine.dispose()


def create_app(settings: Settings, services: Services | None = None) -> web.Application:
    services = services or create_services(settings)
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SERVICES] = services
    websockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
    app[WEBSOCKETS] = websockets
    view = KindRobotsGraphQLView(services)
    app.router.add_route("GET", "/graphql", view)
    app.router.add_route("POST", "/graphql", view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/metrics", metrics)
    add_widget_routes(app, settings)
    add_webhook_routes(app, services)  # only while billing is configured: else 404
    # Both go in front of any other middleware: the HTTPS redirect first, then CORS.
    setup_cors(app, CorsPolicy(settings.dashboard_origins, project_origins(services.sessionmaker)))
    setup_transport(app, settings)
    app.middlewares.append(graphql_request_errors)  # innermost: CORS still sees the answer
    app.on_response_prepare.append(_response_headers)
    app.on_shutdown.append(_close_websockets)
    app.on_cleanup.append(_close_services)
    return app


def run(settings: Settings, **kwargs: Any) -> None:
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout,
        access_log_class=AccessLogger,
        ssl_context=ssl_context_for(settings),  # KR_TLS_CERT/KR_TLS_KEY; TLS 1.2 at least
        **kwargs,
    )
