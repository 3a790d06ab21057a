"""The GraphQL schema: every domain's types and root fields, merged."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

from kindrobots.schema.auth import AuthMutation, AuthQuery
from kindrobots.schema.node import NodeQuery
from kindrobots.schema.organizations import OrganizationMutation, OrganizationQuery
from kindrobots.security.errors import PublicErrors

Query = merge_types("Query", (NodeQuery, AuthQuery, OrganizationQuery))
Mutation = merge_types("Mutation", (AuthMutation, OrganizationMutation))


class OperationScope(SchemaExtension):
    """A WebSocket connection shares one context; each operation starts with fresh caches."""

    def on_operation(self) -> Any:
        context = self.execution_context.context
        if hasattr(context, "begin_operation"):
            context.begin_operation()
        yield


class Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Unexpected errors are logged once, with their errorId, by ``PublicErrors``."""


def build_schema(*, production: bool = False) -> Schema:
    return Schema(
        query=Query,
        mutation=Mutation,
        extensions=[OperationScope, PublicErrors],
        config=StrawberryConfig(disable_field_suggestions=production),
    )
