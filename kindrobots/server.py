"""The aiohttp application: GraphQL over HTTP and WebSocket, health, JWKS."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hmac
import logging
import os
import re
import socket
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import WSCloseCode, web, web_response
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import GraphQLError
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
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

from kindrobots.auth import signing_keys
from kindrobots.auth.principals import UserActor, WidgetActor
from kindrobots.auth.tokens import TokenSigner
from kindrobots.auth.widgets import UNAUTHORIZED, WidgetRejected, authenticate_widget
from kindrobots.billing.stripe_client import StripeGateway
from kindrobots.broker.memory import MemoryBroker
from kindrobots.broker.redis import RedisBroker
from kindrobots.config import Settings, display_url
from kindrobots.context import Cookie, RequestContext, Services
from kindrobots.db.engine import create_engine, create_sessionmaker
from kindrobots.db.migrate import migration_state
from kindrobots.errors import Forbidden, PublicError, ServiceUnavailable
from kindrobots.logs import REQUEST_ID
from kindrobots.metrics import Metrics
from kindrobots.metrics import reset as reset_metrics
from kindrobots.metrics import use as use_metrics
from kindrobots.resolvers import security_events
from kindrobots.resolvers.containment import CONTROL_CHANNEL, organization_key, project_key
from kindrobots.schema import build_schema
from kindrobots.schema.callers import identify
from kindrobots.security.alerts import Alerts
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
from kindrobots.security.events import (
    WIDGET_ORIGIN_REFUSED,
    WIDGET_TOKEN_REFUSED,
    Refusals,
)
from kindrobots.security.jwks import JwksCache
from kindrobots.security.operation_limits import MAX_DOCUMENT_CHARS
from kindrobots.security.ratelimit import MemoryLimiter, RedisLimiter
from kindrobots.security.redaction import redact
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
HTTP_METHODS = frozenset(("GET", "POST", "OPTIONS", "HEAD", "PUT", "PATCH", "DELETE"))
# Set on the KR_METRICS_PORT listener's app: reaching it is the access control.
METRICS_LISTENER: web.AppKey[bool] = web.AppKey("metrics_listener", bool)
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
# The GraphQL operation names of a request (a batch has several), for its access log line.
OPERATIONS: web.RequestKey[list[str]] = web.RequestKey("graphql_operations", list)
REQUEST_ID_KEY: web.RequestKey[str] = web.RequestKey("request_id", str)
REQUEST_ID_HEADER = "X-Request-ID"
# A caller's X-Request-ID is kept when it is a plain token that is safe in a log line and a
# header (a UUID, a proxy's trace id); anything else is replaced by one of ours.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
GRAPHQL_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]{0,99}")
# The first operation of a document that names it, when the request gives no operationName:
# comments first removed, so that a `# query Fake` cannot name it.
FIRST_OPERATION = re.compile(r"\b(?:query|mutation|subscription)\s+([_A-Za-z][_0-9A-Za-z]{0,99})")
COMMENT = re.compile(r"#[^\n\r]*")


def request_id(request: web.BaseRequest) -> str:
    """The request's id: its sane ``X-Request-ID``, else one generated, fixed at first use."""
    known = request.get(REQUEST_ID_KEY)
    if known is None:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        known = given if SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        request[REQUEST_ID_KEY] = known
    return known


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every line logged while the request (or its WebSocket) is served carries its id."""
    token = REQUEST_ID.set(request_id(request))
    try:
        return await handler(request)
    finally:
        REQUEST_ID.reset(token)


def operation_name(request_data: GraphQLRequestData) -> str | None:
    """The operation's name for the log: the request's ``operationName`` if it is a GraphQL
    name, else the document's first named operation; never other client text."""
    given = request_data.operation_name
    if given is not None:
        return given if GRAPHQL_NAME.fullmatch(given) else None
    found = FIRST_OPERATION.search(COMMENT.sub("", request_data.query or ""))
    return found.group(1) if found else None


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
    response.headers[REQUEST_ID_HEADER] = request_id(request)
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
            context.websocket = response
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
            self._record_refusal(context, rejected)
            return None
        context.caller = dataclasses.replace(actor, ip=context.ip)
        return context.caller

    def _record_refusal(self, context: RequestContext, rejected: WidgetRejected) -> None:
        """Origin and end-user token refusals are security events (throttled per address);
        neither the origin nor the token the caller sent goes into them."""
        transport = "websocket" if context.close_connection is not None else "http"
        if rejected.close_code == UNAUTHORIZED:
            # "end-user token refused: <reason>": the verifier's words, cut before anything
            # quoted from the token itself ("algorithm '<alg>' not allowed").
            check = rejected.reason.partition(": ")[2] or rejected.reason
            check = re.split(r"['\"]", check, maxsplit=1)[0].strip()
            self.services.refused(
                WIDGET_TOKEN_REFUSED,
                source=f"{context.ip}",
                ip=context.ip,
                details={"check": check[:80], "transport": transport},
            )
        elif rejected.reason.startswith("origin not allowed"):
            self.services.refused(
                WIDGET_ORIGIN_REFUSED,
                source=f"{context.ip}",
                ip=context.ip,
                details={"transport": transport},
            )

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
            self._opened(slot, "widget")
            if context.websocket is not None:
                self.services.live.add(
                    context.websocket,
                    (project_key(caller.project_id), organization_key(caller.organization_id)),
                )
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
        try:
            if token or context.access_token:
                # Known from the start, the connection is indexed for containment.
                await identify(context)
        except Forbidden as refused:  # a suspended account
            if context.close_connection is not None:
                await context.close_connection(code=4403, message=refused.message.encode()[:123])
            raise ConnectionRejectionError() from None
        if token and not isinstance(context.caller, UserActor):
            # Refuse a token that is forged, expired or whose session was signed out.
            raise ConnectionRejectionError()
        self._opened(context.connection_slot, "dashboard")
        return None

    def _opened(self, slot: Slot | None, kind: str) -> None:
        if slot is not None and slot.kind is None:
            slot.kind = kind
            self.services.metrics.websockets.labels(kind).inc()

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
            if slot.kind is not None:
                self.services.metrics.websockets.labels(slot.kind).dec()
            websocket = request.get(WEBSOCKET)
            if websocket is not None:
                self.services.live.remove(websocket)

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
        name = operation_name(request_data)
        if name is not None:
            request.setdefault(OPERATIONS, []).append(name)
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
    """One line per request, its fields also as JSON keys. The path without its query
    string, which may carry GraphQL variables or a key."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        operation = ",".join(request.get(OPERATIONS, ())) or None
        identifier = request_id(request)
        self.logger.info(
            "%s %s %s %s %.1fms%s",
            request.remote,
            request.method,
            request.path,
            response.status,
            time * 1000,
            f" {operation}" if operation else "",
            extra={
                "remote": request.remote,
                "method": request.method,
                "path": redact(request.path),
                "status": response.status,
                "duration_ms": round(time * 1000, 1),
                "operation": operation,
                "request_id": identifier,
            },
        )


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    checks: dict[str, str] = {}
    reasons: list[str] = []
    try:
        async with services.engine.connect() as connection:
            migrations = await migration_state(connection)
        checks["database"] = "ok"
        # A database restored from an old backup, or code deployed before its migration.
        checks["migrations"] = "behind" if migrations.behind else "ok"
        if migrations.behind:
            reasons.append(migrations.describe())
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
    body: dict[str, object] = {"status": "ok" if ready else "unavailable", "checks": checks}
    if reasons:
        body["reason"] = "; ".join(reasons)
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics of this app and the process.

    With ``KR_METRICS_TOKEN`` only ``Authorization: Bearer <token>`` reads them (401
    otherwise). Without it: on the ``KR_METRICS_PORT`` listener (bound to 127.0.0.1) anyone
    who reaches it, and on the main port loopback callers outside production only -- behind
    a proxy on the same host every caller looks local, so production needs one of the two.
    """
    services = request.app[SERVICES]
    settings = services.settings
    if settings.metrics_token:
        expected = f"Bearer {settings.metrics_token}".encode()
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            return web.json_response(
                {"error": "metrics need Authorization: Bearer <KR_METRICS_TOKEN>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    elif not request.app.get(METRICS_LISTENER, False) and (
        settings.is_production or request.remote not in ("127.0.0.1", "::1")
    ):
        raise web.HTTPNotFound()
    body = generate_latest(services.metrics.registry) + generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def observe_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts every request by route, and makes this app's metrics current for the code
    below the server (providers, the SSRF guard) and the tasks the request starts."""
    services = request.app[SERVICES]
    token = use_metrics(services.metrics)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        reset_metrics(token)
        resource = request.match_info.route.resource
        services.metrics.http_requests.labels(
            resource.canonical if resource is not None else "unmatched",
            request.method if request.method in HTTP_METHODS else "other",
            f"{status // 100}xx",
        ).inc()


async def _metrics_listener(app: web.Application) -> AsyncIterator[None]:
    """KR_METRICS_PORT: /metrics on 127.0.0.1:<port> only, started and stopped with the app."""
    port = app[SERVICES].settings.metrics_port
    assert port is not None
    side = web.Application()
    side[SERVICES] = app[SERVICES]
    side[METRICS_LISTENER] = True
    side.router.add_get("/metrics", metrics)
    runner = web.AppRunner(side, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def jwks(request: web.Request) -> web.Response:
    return web.json_response(
        request.app[SERVICES].signer.jwks(datetime.now(UTC)),
        headers={"Cache-Control": "public, max-age=300"},
    )


def _monitoring(services: Services) -> None:
    """Metrics, alerts and refusal events of ``services``, wired to each other: write
    sessions hand their committed security events to the alert engine."""
    settings, metrics = services.settings, services.metrics
    alerts = Alerts(settings, metrics, services.redis)
    services.alerts = alerts
    info = dict(services.writer.kw.get("info") or {})
    services.writer.configure(info={**info, security_events.ALERTS_KEY: alerts})
    metrics.watch_pool(lambda: services.engine.pool)
    metrics.on_upstream = alerts.upstream

    async def store(
        event: str, ip: str | None, user_id: uuid.UUID | None, details: dict[str, Any]
    ) -> None:
        async with services.write() as session:
            await security_events.record(
                session, None, datetime.now(UTC), event, user_id=user_id, ip=ip, details=details
            )

    services.refusals = Refusals(
        store,
        alerts.observe,
        window=settings.security_event_throttle_seconds,
        rows_per_window=settings.security_event_throttle_rows,
    )

    def ssrf_refused(event: str, details: dict[str, Any]) -> None:
        source = ":".join(str(details.get(name)) for name in ("category", "field"))
        services.refused(event, source=source, ip=None, details=details)

    metrics.on_refusal = ssrf_refused


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
    services = Services(
        settings=settings,
        engine=engine,
        sessionmaker=create_sessionmaker(engine),
        writer=create_sessionmaker(engine, write=True, audit_key=settings.audit_key),
        signer=TokenSigner(
            settings.signing_keys,
            issuer=settings.public_url,
            ttl=timedelta(seconds=settings.access_token_ttl),
            keyring=KeyRing(settings.encryption_keys),
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
        metrics=Metrics(),
    )
    _monitoring(services)
    return services


CONTAINMENT: web.AppKey[asyncio.Task[None]] = web.AppKey("containment", asyncio.Task)
# Seconds between attempts to subscribe the control channel again after the broker failed.
CONTROL_RETRY = 1.0


async def _contain_message(services: Services, message: dict[str, Any], closing: set[Any]) -> None:
    """One control message: close the matching connections (each in a task of its own, as
    a close waits for the client's answer), or read the signing keys again."""
    if message.get("kind") == "signing_keys":
        async with services.read() as session:
            await signing_keys.refresh(session, services.signer, datetime.now(UTC))
        return
    match, code, reason = message.get("match"), message.get("code"), message.get("reason")
    if message.get("kind") != "close" or not isinstance(match, list) or code not in (4401, 4403):
        logger.warning("unknown control message skipped")
        return
    payload = str(reason or "").encode()[:123].decode(errors="ignore").encode()
    for websocket in services.live.matching(m for m in match if isinstance(m, list)):
        services.live.remove(websocket)
        task = asyncio.create_task(websocket.close(code=code, message=payload))
        closing.add(task)
        task.add_done_callback(closing.discard)


async def _contain(services: Services) -> None:
    """Containment published by any instance (resolvers.containment.announce) closes this
    instance's matching WebSockets; for the process's life, resubscribing after an outage."""
    closing: set[asyncio.Task[Any]] = set()
    lost = False  # logged once per outage: the broker logs its own reconnects
    while True:
        try:
            async with services.broker.subscribe(CONTROL_CHANNEL) as messages:
                lost = False
                async for message in messages:
                    try:
                        await _contain_message(services, message, closing)
                    except Exception:
                        logger.exception("control message failed")
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if not lost:
                logger.warning("control channel lost (%s); subscribing again", type(error).__name__)
            lost = True
        await asyncio.sleep(CONTROL_RETRY)


async def _start_containment(app: web.Application) -> None:
    services = app[SERVICES]
    try:
        async with services.read() as session:
            await signing_keys.refresh(session, services.signer, datetime.now(UTC))
    except Exception:
        # KR_SIGNING_KEYS serves until the next control message or unknown key ID.
        logger.warning("signing keys not read from the database", exc_info=True)
    app[CONTAINMENT] = asyncio.create_task(_contain(services), name="kindrobots-containment")


async def _stop_containment(app: web.Application) -> None:
    task = app.get(CONTAINMENT)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _close_websockets(app: web.Application) -> None:
    websockets = app[WEBSOCKETS]
    for websocket in [*websockets]:
        await websocket.close(code=WSCloseCode.GOING_AWAY, message=b"Server shutting down")


async def _close_services(app: web.Application) -> None:
    services = app[SERVICES]
    if services.refusals is not None:
        await services.refusals.drain()
    if services.alerts is not None:
        await services.alerts.drain()
        await services.alerts.close()
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
    if settings.metrics_port is None:
        app.router.add_get("/metrics", metrics)
    else:
        app.cleanup_ctx.append(_metrics_listener)
    add_widget_routes(app, settings)
    add_webhook_routes(app, services)  # only while billing is configured: else 404
    # Both go in front of any other middleware: the HTTPS redirect first, then CORS.
    setup_cors(app, CorsPolicy(settings.dashboard_origins, project_origins(services.sessionmaker)))
    setup_transport(app, settings)
    app.middlewares.append(observe_requests)
    app.middlewares.append(graphql_request_errors)  # innermost: CORS still sees the answer
    app.middlewares.insert(0, request_ids)  # outermost: the redirect's lines carry it too
    app.on_response_prepare.append(_response_headers)
    app.on_startup.append(_start_containment)
    app.on_shutdown.append(_stop_containment)
    app.on_shutdown.append(_close_websockets)
    app.on_cleanup.append(_close_services)
    return app


class ListenError(Exception):
    """The listen address cannot be bound: in use, not this machine's, or privileged."""


LISTEN_ERRNOS = frozenset((errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES))


def startup_fields(settings: Settings) -> dict[str, object]:
    """What an operator checks first: mode, backing services (no credentials), URLs."""
    scheme = "https" if settings.tls_cert else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    listen = f"{scheme}://{host}:{settings.port}"
    return {
        "mode": settings.env,
        "database": display_url(settings.database_url),
        "broker": display_url(settings.redis_url) or "in-process",
        "public_url": settings.public_url,
        "listen": listen,
        "metrics": _metrics_location(settings, listen),
    }


def _metrics_location(settings: Settings, listen: str) -> str:
    if settings.metrics_port is not None:
        return f"http://127.0.0.1:{settings.metrics_port}/metrics (KR_METRICS_PORT)"
    return f"{listen}/metrics ({'token' if settings.metrics_token else 'loopback only'})"


def _announce(settings: Settings) -> Callable[[str], None]:
    """run_app's ``print``, called once every site listens: the start-up log line, and
    aiohttp's banner on a terminal only (text logs), never among JSON lines."""

    def announce(banner: str) -> None:
        fields = startup_fields(settings)
        logger.info(
            "kindrobots started: %s",
            ", ".join(f"{name} {value}" for name, value in fields.items()),
            extra={"event": "startup", **fields},
        )
        if not settings.json_logs:
            print(banner, flush=True)

    return announce


def run(settings: Settings, **kwargs: Any) -> None:
    """Serve until SIGINT or SIGTERM; :class:`ListenError` when the address cannot be bound."""
    try:
        web.run_app(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            shutdown_timeout=settings.shutdown_timeout,
            access_log_class=AccessLogger,
            ssl_context=ssl_context_for(settings),  # KR_TLS_CERT/KR_TLS_KEY; TLS 1.2 at least
            print=_announce(settings),
            **kwargs,
        )
    except OSError as error:
        if isinstance(error, socket.gaierror) or error.errno in LISTEN_ERRNOS:
            # asyncio's own text repeats the address; the errno's is the reason alone.
            gai = isinstance(error, socket.gaierror)
            reason = (error.strerror if gai else None) or os.strerror(error.errno or 0)
            raise ListenError(
                f"cannot listen on {settings.host}:{settings.port} (KR_HOST/KR_PORT, "
                f"--host/--port): {reason.lower()}"
            ) from None
        raise
