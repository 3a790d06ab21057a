"""Operation metrics: every GraphQL operation counted by name and type, queries and
mutations timed, errors counted by code, subscriptions gauged while they run.

Listed first among the schema's extensions, so it sees errors after ``PublicErrors``
rewrote them: the codes counted are the ones clients receive.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from graphql import FieldNode, OperationDefinitionNode
from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

from kindrobots.context import RequestContext
from kindrobots.metrics import Metrics

UNKNOWN = "unknown"


class OperationMetrics(SchemaExtension):
    def __init__(self) -> None:
        self._streamed = False
        self._subscription: str | None = None

    def _metrics(self) -> Metrics | None:
        context = self.execution_context.context
        return context.services.metrics if isinstance(context, RequestContext) else None

    def _labels(self, metrics: Metrics) -> tuple[str, str]:
        context = self.execution_context
        try:
            kind = context.operation_type.value
        except Exception:  # no document, or not one operation: still counted
            kind = UNKNOWN
        try:
            name = context.operation_name
        except Exception:
            name = None
        return metrics.operation_names.label(name), kind

    async def on_operation(self) -> AsyncIterator[None]:
        metrics = self._metrics()
        started = time.perf_counter()
        try:
            yield
        finally:
            if metrics is not None:
                operation, kind = self._labels(metrics)
                metrics.operations.labels(operation, kind).inc()
                if self._subscription is not None:
                    metrics.subscriptions.labels(self._subscription).dec()
                elif kind != OperationType.SUBSCRIPTION.value:
                    metrics.operation_seconds.labels(operation, kind).observe(
                        time.perf_counter() - started
                    )
                if not self._streamed:
                    self._count_errors(metrics, self.execution_context.result)

    def on_execute(self) -> Iterator[None]:
        metrics = self._metrics()
        context = self.execution_context
        document = context.graphql_document
        if metrics is not None and document is not None:
            try:
                subscription = context.operation_type is OperationType.SUBSCRIPTION
            except Exception:
                subscription = False
            if subscription:
                # The root field: validated against the schema, so one of a fixed few.
                operation = next(
                    (d for d in document.definitions if isinstance(d, OperationDefinitionNode)),
                    None,
                )
                selection = operation.selection_set.selections[0] if operation else None
                if isinstance(selection, FieldNode):
                    self._subscription = selection.name.value
                    metrics.subscriptions.labels(self._subscription).inc()
        yield

    def on_stream_result(self, result: Any) -> Iterator[None]:
        self._streamed = True
        yield
        metrics = self._metrics()
        if metrics is not None:
            self._count_errors(metrics, result)

    @staticmethod
    def _count_errors(metrics: Metrics, result: Any) -> None:
        for error in getattr(result, "errors", None) or ():
            code = (error.extensions or {}).get("code")
            metrics.errors.labels(code if isinstance(code, str) else UNKNOWN).inc()
