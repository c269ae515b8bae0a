"""Running one GraphQL operation: cached parse + validation, then graphql-core execution.

The schema is built by strawberry, but each request goes straight to graphql-core: strawberry's
per-request extension runner is the largest fixed cost of a small query, and nothing here needs
it. Parsing and validation results are kept per document text in a bounded LRU, with the cost
limits (depth, tokens, introspection) applied once when a document is first seen.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    GraphQLSchema,
    NoSchemaIntrospectionCustomRule,
    OperationType,
    execute,
    get_operation_ast,
    parse,
    specified_rules,
    validate,
)

from gateway.errors import ErrorCode
from gateway.limits import max_depth_rule

__all__ = ["Executor", "PreparedOperation"]


@dataclass(frozen=True, slots=True)
class PreparedOperation:
    document: DocumentNode | None
    errors: tuple[GraphQLError, ...]

    def operation_type(self, operation_name: str | None) -> OperationType | None:
        if self.document is None:
            return None
        operation = get_operation_ast(self.document, operation_name)
        return operation.operation if operation is not None else None


class Executor:
    # 1000 distinct documents: a real client fleet sends tens to hundreds; the bound stops an
    # attacker sending unique queries from growing memory without limit.
    CACHE_SIZE = 1000

    def __init__(
        self,
        schema: GraphQLSchema,
        *,
        max_depth: int,
        max_tokens: int,
        introspection: bool,
    ) -> None:
        self.schema = schema
        self.max_tokens = max_tokens
        rules: list[Any] = [*specified_rules, max_depth_rule(max_depth)]
        if not introspection:
            rules.append(NoSchemaIntrospectionCustomRule)
        self.rules: Sequence[Any] = tuple(rules)
        self._prepared: OrderedDict[str, PreparedOperation] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def prepare(self, query: str) -> PreparedOperation:
        prepared = self._prepared.get(query)
        if prepared is not None:
            self._prepared.move_to_end(query)
            self.hits += 1
            return prepared
        self.misses += 1
        try:
            document = parse(query, max_tokens=self.max_tokens)
        except GraphQLError as error:
            if "tokens. Parsing aborted" in error.message:
                error.extensions = {"code": ErrorCode.QUERY_TOO_COMPLEX.value}
            prepared = PreparedOperation(None, (error,))
        else:
            errors = validate(self.schema, document, self.rules)
            prepared = PreparedOperation(document, tuple(errors))
        self._prepared[query] = prepared
        if len(self._prepared) > self.CACHE_SIZE:
            self._prepared.popitem(last=False)
        return prepared

    async def execute(
        self,
        prepared: PreparedOperation,
        *,
        context: Any,
        variables: dict[str, Any] | None,
        operation_name: str | None,
    ) -> ExecutionResult:
        if prepared.errors or prepared.document is None:
            return ExecutionResult(data=None, errors=list(prepared.errors))
        result = execute(
            self.schema,
            prepared.document,
            context_value=context,
            variable_values=variables,
            operation_name=operation_name,
        )
        if inspect.isawaitable(result):
            result = await result
        assert isinstance(result, ExecutionResult)
        return result
