"""graphql-core's executor with plain leaf fields read inline, and a cheaper awaitable test.

A list of 100 organizations with five scalar fields each is 500 leaf fields, and graphql-core
spends on every one of them a ``GraphQLResolveInfo``, a ``Path``, strawberry's resolver
wrapper (``getattr``), two awaitable tests and ``complete_value``'s type dispatch: about half
of such a request's CPU time in py-spy profiles (bench/RESULTS.md). For the fields where
strawberry itself would do nothing but ``getattr(source, python_name)`` (no resolver, no
arguments, no extensions) and the type is a scalar or enum, ``InlineLeafExecutor`` reads the
attribute and coerces it in place.

The answer is graphql-core's, by construction: whenever the inline read could end in anything
but a plain value (the attribute is missing, is an exception, is null on a non-null field, or
does not coerce), the field goes through graphql-core's own ``execute_field``, which raises,
locates and reports the error exactly as it always did. tests/test_completion.py runs generated
documents both ways and compares the answers byte for byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import Any, Final, NamedTuple, TypeGuard

from graphql import (
    GraphQLEnumType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
)
from graphql.execution.collect_fields import GroupedFieldSet
from graphql.execution.incremental.incremental_executor import IncrementalExecutor
from graphql.pyutils import AwaitableOrValue, Path, Undefined, gather_with_cancel

__all__ = ["InlineLeafExecutor", "inline_leaf_fields", "is_awaitable"]

_STRAWBERRY_FIELD: Final = "strawberry-definition"  # GraphQLCoreConverter.DEFINITION_BACKREF


class _Leaf(NamedTuple):
    attribute: str
    coerce: Callable[[Any], Any]
    non_null: bool


LeafTable = dict[GraphQLObjectType, dict[str, _Leaf]]


def inline_leaf_fields(schema: GraphQLSchema) -> LeafTable:
    """Per object type, the fields ``InlineLeafExecutor`` may read inline, by field name."""
    table: LeafTable = {}
    for name, graphql_type in schema.type_map.items():
        if name.startswith("__") or not isinstance(graphql_type, GraphQLObjectType):
            continue
        leaves: dict[str, _Leaf] = {}
        for field_name, field in graphql_type.fields.items():
            definition = (field.extensions or {}).get(_STRAWBERRY_FIELD)
            # strawberry marks the resolver it builds for a field with none of its own; any
            # other resolver (ours, or one strawberry wraps with extensions) stays a resolver.
            if definition is None or not getattr(field.resolve, "_is_default", False):
                continue
            if field.args or definition.base_resolver is not None or definition.extensions:
                continue
            return_type = field.type
            non_null = isinstance(return_type, GraphQLNonNull)
            named = return_type.of_type if non_null else return_type
            if isinstance(named, GraphQLEnumType):
                leaves[field_name] = _Leaf(definition.python_name, _enum_names(named), non_null)
            elif isinstance(named, GraphQLScalarType):
                leaves[field_name] = _Leaf(
                    definition.python_name, named.coerce_output_value, non_null
                )
        if leaves:
            table[graphql_type] = leaves
    return table


def _enum_names(enum: GraphQLEnumType) -> Callable[[Any], Any]:
    """The enum's output coercion for our Python enum members, by dict: strawberry's
    compares the value with each of the enum's values in turn. Anything else is None, so the
    field takes graphql-core's path (and the enum type's own coercion) instead."""
    members = getattr(enum, "wrapped_cls", None)
    if members is None:
        return enum.coerce_output_value
    names = {members(value.value): name for name, value in enum.values.items()}

    def coerce(value: Any) -> Any:
        return names.get(value) if type(value) is members else None

    return coerce


# Types seen by is_awaitable, and whether their instances are: the program's own classes and
# a few builtins, so the table stays as small as the code base (no value decides its size).
_AWAITABLE_TYPES: dict[type, bool] = {CoroutineType: True, asyncio.Future: True, asyncio.Task: True}


def is_awaitable(value: Any) -> TypeGuard[Awaitable[Any]]:
    """graphql-core's test, by type: ``await`` looks ``__await__`` up on the type, so the type
    decides. graphql-core's own asks ``hasattr(value, "__await__")`` of every value, which costs
    a failed attribute lookup (an exception inside CPython) per leaf and object."""
    kind = type(value)
    known = _AWAITABLE_TYPES.get(kind)
    if known is None:
        known = _AWAITABLE_TYPES[kind] = hasattr(kind, "__await__")
    return known


class InlineLeafExecutor(IncrementalExecutor):
    """The executor ``gateway.execution.Executor`` runs operations with (see module docstring).
    ``leaf_fields`` is the schema's ``inline_leaf_fields`` table, built once per schema."""

    leaf_fields: LeafTable = {}

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: GroupedFieldSet,
        position_context: Any,
    ) -> AwaitableOrValue[dict[str, Any]]:
        leaves = self.leaf_fields.get(parent_type)
        if leaves is None:
            return super().execute_fields(
                parent_type, source_value, path, grouped_field_set, position_context
            )
        results: dict[str, Any] = {}
        awaitable_fields: list[str] = []
        try:
            for response_name, field_details_list in grouped_field_set.items():
                leaf = leaves.get(field_details_list[0].node.name.value)
                if leaf is not None:
                    value = getattr(source_value, leaf.attribute, Undefined)
                    if value is None:
                        if not leaf.non_null:
                            results[response_name] = None
                            continue
                    elif value is not Undefined and not isinstance(value, Exception):
                        try:
                            coerced = leaf.coerce(value)
                        except Exception:  # graphql-core's path below raises it again, located
                            coerced = None
                        if coerced is not None and coerced is not Undefined:
                            results[response_name] = coerced
                            continue
                result = self.execute_field(
                    parent_type,
                    source_value,
                    field_details_list,
                    Path(path, response_name, parent_type.name),
                    position_context,
                )
                if result is not Undefined:
                    results[response_name] = result
                    if self.is_awaitable(result):
                        awaitable_fields.append(response_name)
        except Exception:
            if awaitable_fields:
                self.settle_in_background([results[name] for name in awaitable_fields])
            raise
        if not awaitable_fields:
            return results

        async def get_results() -> dict[str, Any]:
            if len(awaitable_fields) == 1:
                name = awaitable_fields[0]
                results[name] = await results[name]
            else:
                awaited = await gather_with_cancel(*(results[name] for name in awaitable_fields))
                results.update(zip(awaitable_fields, awaited, strict=True))
            return results

        return get_results()
