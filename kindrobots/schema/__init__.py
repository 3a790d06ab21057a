"""The GraphQL schema: every domain's types and root fields, merged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from functools import partial
from typing import Any, cast

import strawberry
from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.schema import StreamResult, SubscriptionResult
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext
from strawberry.types.base import StrawberryObjectDefinition
from strawberry.types.execution import PreExecutionError
from strawberry.types.graphql import OperationType

from kindrobots.auth.principals import UserActor
from kindrobots.config import Settings, load_trusted_documents
from kindrobots.context import RequestContext
from kindrobots.schema.agents import AgentMutation
from kindrobots.schema.auth import AuthMutation, AuthQuery
from kindrobots.schema.base import Info
from kindrobots.schema.billing import BillingMutation
from kindrobots.schema.callers import begin_operation
from kindrobots.schema.chat import ChatMutation, ChatQuery, ChatSubscription
from kindrobots.schema.credentials import CredentialMutation
from kindrobots.schema.data_rights import DataRightsMutation
from kindrobots.schema.directives import install_rate_limits
from kindrobots.schema.events import EventExecutor
from kindrobots.schema.manifests import ManifestMutation
from kindrobots.schema.monitoring import OperationMetrics
from kindrobots.schema.node import NodeQuery
from kindrobots.schema.organizations import OrganizationMutation, OrganizationQuery
from kindrobots.schema.permissions import check_sources
from kindrobots.schema.plain import PlainExecutionContext
from kindrobots.schema.projects import ProjectMutation
from kindrobots.schema.staff import StaffMutation
from kindrobots.security.documents import (
    NOT_TRUSTED,
    DocumentCache,
    DocumentStore,
    document_hash,
)
from kindrobots.security.errors import PublicErrors
from kindrobots.security.operation_limits import OperationLimits, OperationLimitsExtension

Query = merge_types("Query", (NodeQuery, AuthQuery, OrganizationQuery, ChatQuery))
Mutation = merge_types(
    "Mutation",
    (
        AuthMutation,
        OrganizationMutation,
        CredentialMutation,
        AgentMutation,
        ManifestMutation,
        ProjectMutation,
        ChatMutation,
        BillingMutation,
        DataRightsMutation,
        StaffMutation,
    ),
)
Subscription = merge_types("Subscription", (ChatSubscription,))
install_rate_limits((Query, Mutation, Subscription))


class OperationScope(SchemaExtension):
    """Each operation starts by knowing its caller, with fresh caches: a WebSocket runs
    many operations on one context, and none may act on a session that has ended.

    If the caller cannot be looked up (the database is down), the operation does not run:
    the failure becomes its only error, in place of validation, so ``PublicErrors`` masks it like
    any other (``SERVICE_UNAVAILABLE`` or ``Unexpected error.``). Raised from
    ``on_operation`` itself it would skip the masking and reach the client as it is.
    """

    def __init__(self) -> None:
        self._failure: Exception | None = None

    async def on_operation(self) -> AsyncIterator[None]:
        context = self.execution_context.context
        if isinstance(context, RequestContext):
            try:
                await begin_operation(context)
            except Exception as failure:  # reported by on_validate
                context.caller = None
                self._failure = failure
        yield

    def on_validate(self) -> Iterator[None]:
        # Before validation: errors already there are the operation's result (Strawberry
        # checks them inside this hook, and skips validating a document that has some).
        if self._failure is not None:
            failure, self._failure = self._failure, None
            self.execution_context.pre_execution_errors = [
                GraphQLError("The caller could not be identified.", original_error=failure)
            ]
        yield


class Schema(strawberry.Schema):
    # The process's documents (parsed, validated, persisted), shared by HTTP and WebSocket.
    documents: DocumentStore

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Unexpected errors are logged once, with their errorId, by ``PublicErrors``."""

    async def stream(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        operation_extensions: dict[str, Any] | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
    ) -> StreamResult:
        """What WebSocket operations run through: in trusted-documents mode, only listed
        documents (over HTTP the view checks them before ``execute``)."""
        trusted = self.documents.trusted
        if trusted is not None and query is not None and document_hash(query) not in trusted:
            return _refused(NOT_TRUSTED)
        return await super().stream(
            query,
            variable_values=variable_values,
            context_value=context_value,
            root_value=root_value,
            operation_name=operation_name,
            operation_extensions=operation_extensions,
            allowed_operation_types=allowed_operation_types,
        )

    async def subscribe(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> SubscriptionResult:
        """Any operation, not only subscriptions: the legacy ``graphql-ws`` protocol's ``start``
        runs queries and mutations too, and Strawberry's handler for it calls this method."""
        return cast(
            "SubscriptionResult",
            await self.stream(
                query,
                variable_values=variable_values,
                context_value=context_value,
                root_value=root_value,
                operation_name=operation_name,
                operation_extensions=operation_extensions,
            ),
        )


async def _refused(message: str) -> StreamResult:
    """A stream whose only result is a request error (the document never runs)."""
    yield PreExecutionError(
        data=None, errors=[GraphQLError(message, extensions={"code": "BAD_REQUEST"})]
    )


async def _signed_in(context: Any) -> bool:
    """Whether the caller is a signed-in user (introspection ``authenticated``)."""
    return isinstance(context, RequestContext) and isinstance(context.caller, UserActor)


class FastExecutionContext(EventExecutor, PlainExecutionContext):
    """Both fast paths: known subscription events skip execution (EventExecutor), plain
    fields of a query complete in one walk (PlainExecutionContext); each falls back to
    graphql-core's own execution for anything else."""


def build_schema(settings: Settings | None = None) -> Schema:
    """The schema under ``settings``; without, the development defaults (the SDL never
    depends on settings, only the limits and error texts do)."""
    settings = settings or Settings.model_construct()
    production = settings.is_production
    limits = OperationLimits.from_settings(settings)
    cache = DocumentCache(settings.document_cache_size)
    trusted = (
        load_trusted_documents(settings.trusted_documents)
        if settings.trusted_documents is not None
        else None
    )
    schema = Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        # Factories, not instances: extensions keep per-operation state.
        extensions=[
            OperationMetrics,  # first: it counts the errors PublicErrors rewrote
            OperationScope,
            partial(PublicErrors, hide_suggestions=production),
            partial(OperationLimitsExtension, limits=limits, signed_in=_signed_in, cache=cache),
        ],
        execution_context_class=FastExecutionContext,
        config=StrawberryConfig(
            info_class=Info,
            disable_field_suggestions=production,
            batching_config=(
                {"max_operations": settings.graphql_max_batch}
                if settings.graphql_batching
                else None
            ),
        ),
    )
    schema.documents = DocumentStore(cache, trusted, max_chars=limits.max_chars)
    check_sources(
        [
            concrete.definition
            for concrete in schema.schema_converter.type_map.values()
            if isinstance(concrete.definition, StrawberryObjectDefinition)
        ]
    )
    return schema
