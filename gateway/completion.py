"""graphql-core's executor with plain leaf fields read inline, and a cheaper awaitable test.

A list of 100 organizations with five scalar fields each is 500 leaf fields, and graphql-core
spends on every one of them a ``GraphQLResolveInfo``, a ``Path``, strawberry's resolver
wrapper (``getattr``), two awaitable tests and ``complete_value``'s type dispatch: about half
of such a request's CPU time in py-spy profiles (bench/RESULTS.md). For the fields where
strawberry itself would do nothing but ``getattr(source, python_name)`` (no resolver, no
arguments, no extensions) and the type is a scalar or enum, ``InlineLeafExecutor`` reads the
attribute and coerces it in place, and a list of objects that selects such fields only (a
page's ``nodes { name plan }``) is built row by row without graphql-core's completion of each
item.

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
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLScalarType,
    GraphQLSchema,
)
from graphql.execution.collect_fields import FieldDetailsList, GroupedFieldSet
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


_ANOMALY: Final = object()
"""What an inline read gives when graphql-core must read the field itself (see ``_read``)."""


def _read(source: Any, leaf: _Leaf) -> Any:
    """The leaf's answer read in place, or ``_ANOMALY`` where it could end in anything but a
    plain value (missing, an exception, null on a non-null field, a value that does not
    coerce): graphql-core's path raises, locates and reports those."""
    value = getattr(source, leaf.attribute, Undefined)
    if value is None:
        return _ANOMALY if leaf.non_null else None
    if value is Undefined or isinstance(value, Exception):
        return _ANOMALY
    try:
        coerced = leaf.coerce(value)
    except Exception:
        return _ANOMALY
    return _ANOMALY if coerced is None or coerced is Undefined else coerced


class _RowsPlan(NamedTuple):
    """A list of objects whose selection is plain leaves only, answered row by row in place."""

    fields: tuple[tuple[str, _Leaf], ...]
    is_type_of: Callable[[Any, Any], Any] | None
    items_non_null: bool


class InlineLeafExecutor(IncrementalExecutor):
    """The executor ``gateway.execution.Executor`` runs operations with (see module docstring).
    ``leaf_fields`` is the schema's ``inline_leaf_fields`` table, built once per schema."""

    leaf_fields: LeafTable = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rows_plans: dict[
            tuple[GraphQLList[Any], int], tuple[FieldDetailsList, _RowsPlan | None]
        ] = {}

    def complete_list_value(
        self,
        return_type: GraphQLList[Any],
        field_details_list: FieldDetailsList,
        info: GraphQLResolveInfo,
        path: Path,
        result: Any,
        position_context: Any,
    ) -> AwaitableOrValue[list[Any]]:
        """A list of objects selecting plain leaves only (a page of organizations' ``nodes``)
        as rows built in place: graphql-core completes each item through five calls, a path
        and two awaitable tests before its fields, ~20% of a 100-organization list's time.
        Should any item need more than plain reads (null, another type, an anomaly of a leaf),
        the whole list goes graphql-core's way instead: the reads have no side effects."""
        plan = self._rows_plan(return_type, field_details_list) if type(result) is list else None
        if plan is not None:
            rows = self._rows(plan, result, info)
            if rows is not None:
                return rows
        return super().complete_list_value(
            return_type, field_details_list, info, path, result, position_context
        )

    def _rows_plan(
        self, return_type: GraphQLList[Any], field_details_list: FieldDetailsList
    ) -> _RowsPlan | None:
        # Once per list field of the operation, as graphql-core's collect_subfields: a page's
        # organizations each complete their own subscriptions' nodes with the same plan. The
        # list is kept with its plan, so its id cannot be reused while this execution runs.
        plans = self._rows_plans
        key = (return_type, id(field_details_list))
        known = plans.get(key)
        if known is not None:
            return known[1]
        plan = self._new_rows_plan(return_type, field_details_list)
        plans[key] = (field_details_list, plan)
        return plan

    def _new_rows_plan(
        self, return_type: GraphQLList[Any], field_details_list: FieldDetailsList
    ) -> _RowsPlan | None:
        item_type = return_type.of_type
        items_non_null = isinstance(item_type, GraphQLNonNull)
        object_type = item_type.of_type if items_non_null else item_type
        leaves = self.leaf_fields.get(object_type)
        if leaves is None:
            return None
        grouped_field_set, new_defer_usages, _ = self.collect_subfields(
            object_type, field_details_list
        )
        if new_defer_usages:
            return None
        fields = []
        for response_name, details in grouped_field_set.items():
            leaf = leaves.get(details[0].node.name.value)
            if leaf is None:
                return None
            fields.append((response_name, leaf))
        return _RowsPlan(tuple(fields), object_type.is_type_of, items_non_null)

    @staticmethod
    def _rows(plan: _RowsPlan, items: list[Any], info: GraphQLResolveInfo) -> list[Any] | None:
        rows: list[Any] = []
        is_type_of = plan.is_type_of
        for item in items:
            if item is None or (is_type_of is not None and is_type_of(item, info) is not True):
                return None
            row = {}
            for response_name, leaf in plan.fields:
                value = _read(item, leaf)
                if value is _ANOMALY:
                    return None
                row[response_name] = value
            rows.append(row)
        return rows

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
                    value = _read(source_value, leaf)
                    if value is not _ANOMALY:
                        results[response_name] = value
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
