"""Running one GraphQL operation: cached parse + validation, a cost check, then graphql-core.

The schema is built by strawberry, but each request goes straight to graphql-core: strawberry's
per-request extension runner is the largest fixed cost of a small query, and nothing here needs
it. Parsing and validation results are kept per document text in an LRU bounded by count and by
estimated bytes, with the limits of ``gateway.limits`` applied once when a document is first
seen: its length before parsing, then depth, aliases and selections, and only when those pass
graphql-core's specified rules (which are far costlier on the documents those limits refuse).

Before anything runs, the operation's static estimate of upstream calls is checked against
``max_upstream_calls``; the estimate is cached per document and, when it depends on variables
(``first``, ``providers``, ``provider``, ``after``), per distinct value of those.
"""

from __future__ import annotations

import inspect
import sys
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    GraphQLSchema,
    NoSchemaIntrospectionCustomRule,
    OperationDefinitionNode,
    OperationType,
    Token,
    TokenKind,
    execute,
    get_operation_ast,
    parse,
    specified_rules,
    validate,
)

from gateway.completion import InlineLeafExecutor, inline_leaf_fields, is_awaitable
from gateway.cost import cost_variable_key, cost_variables, estimate_upstream_calls
from gateway.errors import ErrorCode
from gateway.limits import check_document, check_query_bytes, too_complex
from providers.base import CallCosts, ProviderName

__all__ = ["Executor", "PreparedOperation"]

# Rough memory of a parsed document, measured with tracemalloc (graphql-core 3.3, CPython 3.11,
# locations kept): 400-600 bytes per token (the token, its AST node, Location and name string),
# ~250 per comment (no AST node, but linked in the token chain), plus copies of string and
# comment values (at most the text again). Relative to its text an AST weighs 1x (one long
# comment or string) to 170x (tiny queries): 46 bytes of query hold ~8 KB, a 330-byte dashboard
# ~30 KB, 2000 tokens of aliases ~1 MB. Text length alone cannot bound the cache; tokens can.
_BYTES_PER_TOKEN: Final = 600
_BYTES_PER_COMMENT: Final = 250
_ERROR_ENTRY_BYTES: Final = 2_000  # a parse error and its Source, without a document

_COST_KEYS_PER_DOCUMENT: Final = 16
"""Estimates kept per document for distinct cost-variable values: a client pages with a few
``first`` values; beyond that the walk (linear, ~25 µs for a dashboard query) is redone."""


def _entry_bytes(query: str, document: DocumentNode | None) -> int:
    size = sys.getsizeof(query)  # the key, shared with the document's Source
    if document is None or document.loc is None:
        return size + _ERROR_ENTRY_BYTES
    size += len(query)  # token values (names, strings, comments) are copies of the text
    token: Token | None = document.loc.start_token
    while token is not None:
        size += _BYTES_PER_COMMENT if token.kind is TokenKind.COMMENT else _BYTES_PER_TOKEN
        token = token.next
    return size


@dataclass(frozen=True, slots=True, eq=False)
class PreparedOperation:
    """A parsed and validated document (or the errors that stop it), as cached."""

    document: DocumentNode | None
    errors: tuple[GraphQLError, ...]
    size: int = 0
    """Estimated bytes this cache entry holds (text plus AST)."""
    cost_variables: frozenset[str] = frozenset()
    """Variables the upstream-call estimate depends on."""
    estimates: dict[Hashable, int] = field(default_factory=dict, repr=False)
    """Estimates by (operation name, cost-variable values); at most ``_COST_KEYS_PER_DOCUMENT``."""

    def operation(self, operation_name: str | None) -> OperationDefinitionNode | None:
        """The operation ``operation_name`` picks (or the only one); None when none does."""
        if self.document is None:
            return None
        return get_operation_ast(self.document, operation_name)

    def operation_type(self, operation_name: str | None) -> OperationType | None:
        operation = self.operation(operation_name)
        return operation.operation if operation is not None else None


class Executor:
    """Prepares (parse + limits + validation, cached) and executes operations on one schema.

    ``max_selections`` bounds the document's fields, inline fragments and fragment spreads once
    every spread is expanded. It is what keeps graphql-core's OverlappingFieldsCanBeMergedRule
    cheap: that rule compares fields pairwise, so 300 repeated ``providers { provider }`` took
    ~200 ms and 500 ended in "Validation aborted."; at 300 selections the worst documents
    measured validate in ~40-50 ms, while an everyday dashboard query has 25 to 60 and
    GraphiQL's introspection query ~240."""

    # 1000 distinct documents: a real client fleet sends tens to hundreds; the bound stops an
    # attacker sending unique queries from growing memory without limit.
    CACHE_SIZE = 1000
    # 64 MiB: about 1000 everyday documents (30-60 KB each with their AST), but only ~50 of the
    # largest the default limits let through (2000 tokens and 100 KB of text: ~1.4 MB each).
    CACHE_BYTES = 64 * 1024 * 1024
    MAX_SELECTIONS = 300

    def __init__(
        self,
        schema: GraphQLSchema,
        *,
        max_depth: int = 12,
        max_tokens: int = 2000,
        max_aliases: int = 30,
        max_selections: int = MAX_SELECTIONS,
        max_query_bytes: int = 100_000,
        max_upstream_calls: int = 50,
        introspection: bool = True,
        call_costs: Mapping[ProviderName, CallCosts] = MappingProxyType({}),
        cache_size: int = CACHE_SIZE,
        cache_bytes: int = CACHE_BYTES,
        inline_leaves: bool = True,
    ) -> None:
        self.schema = schema
        self.inline_leaves = inline_leaves
        """Run operations with ``gateway.completion.InlineLeafExecutor``; False runs
        graphql-core's own executor, the reference tests/test_completion.py compares with."""
        self.max_depth = max_depth
        self.max_tokens = max_tokens
        self.max_aliases = max_aliases
        self.max_selections = max_selections
        self.max_query_bytes = max_query_bytes
        self.max_upstream_calls = max_upstream_calls
        self.call_costs: Mapping[ProviderName, CallCosts] = dict(call_costs)
        # Suggestions ("Did you mean 'organizations'?") reveal the schema piecemeal: they go
        # wherever introspection goes.
        self.hide_suggestions = not introspection
        rules: list[Any] = list(specified_rules)
        if not introspection:
            rules.append(NoSchemaIntrospectionCustomRule)
        self.rules: Sequence[Any] = tuple(rules)
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        # Larger entries are not kept: one would evict hundreds of everyday documents, and a
        # document that large is rare enough to parse again.
        self.max_entry_bytes = cache_bytes // 8
        self._prepared: OrderedDict[str, PreparedOperation] = OrderedDict()
        self._executor_class = type(
            "SchemaInlineLeafExecutor",
            (InlineLeafExecutor,),
            {"leaf_fields": inline_leaf_fields(schema)},
        )
        self.cached_bytes = 0
        self.hits = 0
        self.misses = 0

    # ---------------------------------------------------------------- preparing

    def prepare(self, query: str) -> PreparedOperation:
        prepared = self._prepared.get(query)
        if prepared is not None:
            self._prepared.move_to_end(query)
            self.hits += 1
            return prepared
        self.misses += 1
        too_long = check_query_bytes(query, self.max_query_bytes)
        if too_long is not None:
            # Not cached: refusing again costs less than remembering a huge text.
            return PreparedOperation(None, (too_long,))
        try:
            document = parse(query, max_tokens=self.max_tokens)
        except GraphQLError as error:
            if "tokens. Parsing aborted" in error.message:
                error.extensions = {"code": ErrorCode.QUERY_TOO_COMPLEX.value}
            prepared = PreparedOperation(None, (error,), size=_entry_bytes(query, None))
        else:
            errors = check_document(
                document,
                max_depth=self.max_depth,
                max_aliases=self.max_aliases,
                max_selections=self.max_selections,
            )
            # The specified rules only see documents our linear limits let through.
            if not errors:
                errors = validate(
                    self.schema, document, self.rules, hide_suggestions=self.hide_suggestions
                )
            prepared = PreparedOperation(
                document,
                tuple(errors),
                size=_entry_bytes(query, document),
                cost_variables=frozenset() if errors else cost_variables(document),
            )
        self._store(query, prepared)
        return prepared

    def _store(self, query: str, prepared: PreparedOperation) -> None:
        if prepared.size > self.max_entry_bytes:
            return
        self._prepared[query] = prepared
        self.cached_bytes += prepared.size
        while len(self._prepared) > self.cache_size or self.cached_bytes > self.cache_bytes:
            _, evicted = self._prepared.popitem(last=False)
            self.cached_bytes -= evicted.size

    # ---------------------------------------------------------------- cost

    def estimate(
        self,
        prepared: PreparedOperation,
        operation_name: str | None,
        variables: Mapping[str, Any] | None,
    ) -> int:
        """The operation's upstream-call estimate (0 for a document that cannot run)."""
        if prepared.document is None or prepared.errors:
            return 0
        key = (operation_name, cost_variable_key(prepared.cost_variables, variables))
        estimates = prepared.estimates
        estimate = estimates.get(key)
        if estimate is None:
            estimate = estimate_upstream_calls(
                prepared.document, operation_name, variables, self.call_costs
            )
            if len(estimates) >= _COST_KEYS_PER_DOCUMENT:
                del estimates[next(iter(estimates))]
            estimates[key] = estimate
        return estimate

    def upstream_cost(
        self,
        prepared: PreparedOperation,
        operation_name: str | None,
        variables: Mapping[str, Any] | None,
    ) -> tuple[int, GraphQLError | None]:
        """The estimate, and the QUERY_TOO_COMPLEX error when it is over ``max_upstream_calls``."""
        estimate = self.estimate(prepared, operation_name, variables)
        if estimate <= self.max_upstream_calls:
            return estimate, None
        assert prepared.document is not None  # a document that cannot run estimates 0
        operation = get_operation_ast(prepared.document, operation_name)
        label = operation.name.value if operation and operation.name else "anonymous"
        return estimate, too_complex(
            f"Operation '{label}' may make {estimate} upstream calls; "
            f"the limit is {self.max_upstream_calls}",
            operation,
        )

    def cost_extension(self, estimate: int) -> dict[str, int]:
        """What a response can report of the estimate (e.g. as ``extensions.cost``)."""
        return {"upstreamCalls": estimate, "maxUpstreamCalls": self.max_upstream_calls}

    # ---------------------------------------------------------------- executing

    async def execute(
        self,
        prepared: PreparedOperation,
        *,
        context: Any,
        variables: dict[str, Any] | None,
        operation_name: str | None,
    ) -> ExecutionResult:
        """Run the operation; over ``max_upstream_calls`` nothing runs and the result has the
        error and no data. ``result.extensions["cost"]`` holds ``cost_extension`` of the
        estimate whenever the document could run (the HTTP layer decides what to show)."""
        if prepared.errors or prepared.document is None:
            return ExecutionResult(data=None, errors=list(prepared.errors))
        estimate, refusal = self.upstream_cost(prepared, operation_name, variables)
        cost = {"cost": self.cost_extension(estimate)}
        if refusal is not None:
            return ExecutionResult(data=None, errors=[refusal], extensions=cost)
        result = execute(
            self.schema,
            prepared.document,
            context_value=context,
            variable_values=variables,
            operation_name=operation_name,
            hide_suggestions=self.hide_suggestions,
            executor_class=self._executor_class if self.inline_leaves else None,
            is_awaitable=is_awaitable if self.inline_leaves else None,
        )
        if inspect.isawaitable(result):
            result = await result
        assert isinstance(result, ExecutionResult)
        result.extensions = {**(result.extensions or {}), **cost}
        return result
