"""The static estimate of the upstream HTTP calls one GraphQL operation can make.

Computed from each configured provider's ``CallCosts`` (``providers.base``) before any resolver
runs, and checked against ``[server] max_upstream_calls`` by ``gateway.execution``; over it, the
operation is refused with ``QUERY_TOO_COMPLEX``. Like the limits of ``gateway.limits``, the walk
is linear in the document: each merged group of fields is costed once, however often its
fragment is spread, and the walk counts its visits so that tests can assert on work done.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Final

from graphql import (
    BooleanValueNode,
    DocumentNode,
    EnumValueNode,
    FieldNode,
    FloatValueNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    NamedTypeNode,
    NullValueNode,
    ObjectValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    ValueNode,
    VariableDefinitionNode,
    VariableNode,
    get_operation_ast,
)

from gateway.limits import COUNT_CAP
from providers.base import CallCosts, ProviderName

__all__ = [
    "UpstreamCallEstimator",
    "cost_variable_key",
    "cost_variables",
    "estimate_upstream_calls",
]

DEFAULT_FIRST: Final = 20
"""The schema's default ``first`` of ``organizations`` and ``subscriptions`` (null too)."""
MAX_FIRST: Final = 100
"""``gateway.schema.MAX_PAGE_SIZE``: an unresolvable or out-of-range ``first`` counts as this."""


def _saturate(count: int) -> int:
    return count if count < COUNT_CAP else COUNT_CAP


# The object types of schema.graphql on the way to an upstream call, and the fields leading
# from each to the next; every other field is resolved from records already fetched.
_CHILD_TYPES: Final[Mapping[str, Mapping[str, str]]] = {
    "OrganizationConnection": {"nodes": "Organization", "edges": "OrganizationEdge"},
    "OrganizationEdge": {"node": "Organization"},
    "Organization": {"subscriptions": "SubscriptionConnection"},
    "SubscriptionConnection": {"nodes": "Subscription", "edges": "SubscriptionEdge"},
    "SubscriptionEdge": {"node": "Subscription"},
    "Subscription": {"organization": "Organization"},
}
_INTERFACES: Final[Mapping[str, frozenset[str]]] = {
    "Organization": frozenset({"Node"}),
    "Subscription": frozenset({"Node"}),
}
_COST_ARGUMENTS: Final = frozenset({"first", "providers", "provider", "after"})


class _Absent:
    """A variable neither sent nor defaulted: the argument takes the field's default."""


class _Unresolved:
    """A value the estimate cannot use (wrong type, undefined variable): assume the worst."""


_ABSENT: Final = _Absent()
_UNRESOLVED: Final = _Unresolved()
_MISSING: Final = ("missing",)


class UpstreamCallEstimator:
    """The upstream calls one operation of ``document`` can make, for the providers in ``costs``.

    An upper bound, from these rules over the schema:

    * ``organization(provider, id)``: that provider's ``get_organization`` (the most expensive
      provider when the argument cannot be resolved; nothing for one that is not configured)
      plus the selected organization's own calls;
    * ``node(id)``: ``get_organization`` plus, for a subscription id, ``subscriptions``, plus the
      selection on that type; the most expensive type and provider;
    * ``organizations(providers, first)``: per selected provider one listing call (single-
      organization providers) or ``ceil(first / organizations_per_page)`` pages (at least one),
      plus every single-organization provider's per-organization calls and ``first`` times the
      dearest multi-organization provider's; with an ``after`` cursor one page more (the page
      holding the cursor is read again, and may have nothing after it);
    * an organization's ``usage`` and ``subscriptions``: ``CallCosts.per_organization``; a
      subscription's ``organization`` costs nothing itself but multiplies its own selection by
      the ``first`` of the subscriptions it was reached through;
    * ``providers``: nothing; ``updateOrganization``: one call plus the returned organization's.

    Fields selected under one parent with the same response key are merged, as GraphQL merges
    them, and count once; aliases are separate fields and count each. ``@skip``/``@include`` are
    ignored (the bound holds either way). Each merged group of fields is costed once."""

    def __init__(
        self,
        document: DocumentNode,
        costs: Mapping[ProviderName, CallCosts],
        variables: Mapping[str, Any] | None = None,
    ) -> None:
        self.document = document
        self.fragments: dict[str, FragmentDefinitionNode] = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self.providers: tuple[ProviderName, ...] = tuple(p for p in ProviderName if p in costs)
        self.costs: tuple[CallCosts, ...] = tuple(costs[p] for p in self.providers)
        self.variables: Mapping[str, Any] = variables or {}
        self.visits = 0
        self._definitions: dict[str, VariableDefinitionNode] = {}
        self._memo: dict[tuple[str, frozenset[int]], tuple[int, ...]] = {}
        self._zero = (0,) * len(self.providers)

    def estimate(self, operation_name: str | None) -> int:
        operation = get_operation_ast(self.document, operation_name)
        if operation is None:
            return 0  # execution reports the missing operation; nothing runs
        self._definitions = {d.variable.name.value: d for d in operation.variable_definitions or ()}
        # The memo holds figures computed with this operation's variable defaults.
        self._memo.clear()
        if operation.operation is OperationType.QUERY:
            root = "Query"
        elif operation.operation is OperationType.MUTATION:
            root = "Mutation"
        else:
            return 0  # the schema has no subscription root: validation refuses these
        fields = self._collect([operation.selection_set], root)
        return sum(self._root_field(root, nodes) for nodes in fields.values())

    # ---------------------------------------------------------------- walking the selections

    def _collect(
        self, selection_sets: Iterable[SelectionSetNode], type_name: str
    ) -> dict[str, list[FieldNode]]:
        """The fields of merged selection sets on an object of ``type_name``, by response key
        (GraphQL's CollectFields: each fragment at most once)."""
        fields: dict[str, list[FieldNode]] = {}
        visited: set[str] = set()
        pending = list(selection_sets)
        while pending:
            for selection in pending.pop().selections:
                self.visits += 1
                if isinstance(selection, FieldNode):
                    key = (selection.alias or selection.name).value
                    fields.setdefault(key, []).append(selection)
                elif isinstance(selection, InlineFragmentNode):
                    if _applies(selection.type_condition, type_name):
                        pending.append(selection.selection_set)
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    if name in visited:
                        continue
                    visited.add(name)
                    fragment = self.fragments.get(name)
                    if fragment is not None and _applies(fragment.type_condition, type_name):
                        pending.append(fragment.selection_set)
        return fields

    def _cost(self, type_name: str, nodes: list[FieldNode]) -> tuple[int, ...]:
        """Calls, per provider, made for one object of ``type_name`` selected by ``nodes``."""
        key = (type_name, frozenset(map(id, nodes)))
        cached = self._memo.get(key)
        if cached is not None:
            return cached
        selection_sets = [n.selection_set for n in nodes if n.selection_set is not None]
        result = self._zero
        if selection_sets and type_name in _CHILD_TYPES:
            children = self._collect(selection_sets, type_name)
            if type_name == "Organization":
                result = self._organization(children)
            else:
                child_types = _CHILD_TYPES[type_name]
                for child_nodes in children.values():
                    child_type = child_types.get(child_nodes[0].name.value)
                    if child_type is not None:
                        result = _add(result, self._cost(child_type, child_nodes))
        self._memo[key] = result
        return result

    def _organization(self, children: dict[str, list[FieldNode]]) -> tuple[int, ...]:
        usage = subscriptions = 0
        nested = self._zero
        for child_nodes in children.values():
            name = child_nodes[0].name.value
            if name == "usage":
                usage += 1
            elif name == "subscriptions":
                subscriptions += 1
                first = max(self._first(node) for node in child_nodes)
                items = self._cost("SubscriptionConnection", child_nodes)
                nested = _add(nested, tuple(first * n for n in items))
        return tuple(
            _per_organization(c, usage, subscriptions) + n
            for c, n in zip(self.costs, nested, strict=True)
        )

    def _root_field(self, root: str, nodes: list[FieldNode]) -> int:
        name = nodes[0].name.value
        if root == "Mutation":
            if name != "updateOrganization":
                return 0
            return max((1 + n for n in self._cost("Organization", nodes)), default=0)
        if name == "organization":
            organization = self._cost("Organization", nodes)
            calls = [c.get_organization + n for c, n in zip(self.costs, organization, strict=True)]
            provider = self._provider(nodes[0])
            if provider is None:
                return max(calls, default=0)
            if provider in self.providers:
                return calls[self.providers.index(provider)]
            return 0  # not configured: FORBIDDEN before any call
        if name == "node":
            organization = self._cost("Organization", nodes)
            subscription = self._cost("Subscription", nodes)
            return max(
                (
                    c.get_organization + max(org, c.subscriptions + sub)
                    for c, org, sub in zip(self.costs, organization, subscription, strict=True)
                ),
                default=0,
            )
        if name == "organizations":
            selected = self._provider_list(nodes[0])
            first = max(self._first(node) for node in nodes)
            items = self._cost("OrganizationConnection", nodes)
            pages = singles = dearest = 0
            paged = False
            for provider, c, item in zip(self.providers, self.costs, items, strict=True):
                if selected is not None and provider not in selected:
                    continue
                if c.organizations_per_page is None:
                    pages += 1
                    singles += item
                else:
                    pages += max(1, math.ceil(first / c.organizations_per_page))
                    dearest = max(dearest, item)
                    paged = True
            if paged and self._argument(nodes[0], "after") not in (_ABSENT, None):
                # Resuming re-reads the page holding the cursor, which may have nothing left.
                pages += 1
            return pages + singles + first * dearest
        return 0  # providers, __typename, __schema, __type: no upstream call

    # ---------------------------------------------------------------- arguments

    def _argument(self, node: FieldNode, name: str) -> Any:
        for argument in node.arguments or ():
            if argument.name.value == name:
                return self._value(argument.value)
        return _ABSENT

    def _value(self, node: ValueNode) -> Any:
        if isinstance(node, VariableNode):
            name = node.name.value
            if name in self.variables:
                return self.variables[name]
            definition = self._definitions.get(name)
            if definition is None:
                return _UNRESOLVED
            if definition.default_value is None:
                return _ABSENT
            return self._value(definition.default_value)
        if isinstance(node, IntValueNode):
            return int(node.value)
        if isinstance(node, FloatValueNode):
            return float(node.value)
        if isinstance(node, StringValueNode | EnumValueNode):
            return node.value
        if isinstance(node, BooleanValueNode):
            return node.value
        if isinstance(node, NullValueNode):
            return None
        if isinstance(node, ListValueNode):
            return [self._value(v) for v in node.values]
        if isinstance(node, ObjectValueNode):
            return _UNRESOLVED
        return _UNRESOLVED  # pragma: no cover - every kind of value is handled above

    def _first(self, node: FieldNode) -> int:
        value = self._argument(node, "first")
        if value is _ABSENT or value is None:
            return DEFAULT_FIRST  # the resolvers read null as the default too
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # GraphQL's Int accepts integral floats from JSON variables
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_FIRST:
            return value
        return MAX_FIRST

    def _provider(self, node: FieldNode) -> ProviderName | None:
        """The ``provider`` argument, or None when it cannot be known."""
        return _provider_name(self._argument(node, "provider"))

    def _provider_list(self, node: FieldNode) -> frozenset[ProviderName] | None:
        """The ``providers`` argument, or None for every configured provider."""
        value = self._argument(node, "providers")
        if value is _ABSENT or value is None:
            return None
        items = value if isinstance(value, list) else [value]  # GraphQL list input coercion
        names = [_provider_name(item) for item in items]
        if any(name is None for name in names):
            return None  # execution refuses the value; should it not, assume every provider
        return frozenset(name for name in names if name is not None)


def _applies(condition: NamedTypeNode | None, type_name: str) -> bool:
    if condition is None:
        return True
    name = condition.name.value
    return name == type_name or name in _INTERFACES.get(type_name, frozenset())


def _add(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _per_organization(costs: CallCosts, usage: int, subscriptions: int) -> int:
    """``usage`` and ``subscriptions`` count the fields selected under different keys: the
    first of each shares ``per_organization``, each further alias pays its own read."""
    if usage and subscriptions:
        return (
            costs.per_organization(usage=True, subscriptions=True)
            + (usage - 1) * costs.usage
            + (subscriptions - 1) * costs.subscriptions
        )
    return usage * costs.usage + subscriptions * costs.subscriptions


def _provider_name(value: Any) -> ProviderName | None:
    if isinstance(value, str):
        try:
            return ProviderName(value)
        except ValueError:
            return None
    return None


def estimate_upstream_calls(
    document: DocumentNode,
    operation_name: str | None,
    variables: Mapping[str, Any] | None,
    costs: Mapping[ProviderName, CallCosts],
) -> int:
    """Upper bound of the upstream HTTP calls the operation can make (see
    ``UpstreamCallEstimator`` for the rules)."""
    return UpstreamCallEstimator(document, costs, variables).estimate(operation_name)


def cost_variables(document: DocumentNode) -> frozenset[str]:
    """Variables the estimate depends on (those inside ``first``, ``providers``, ``provider`` and
    ``after`` arguments); a document without any has one estimate per operation, whatever is
    sent."""
    names: set[str] = set()
    pending: list[SelectionSetNode] = [
        d.selection_set
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode | FragmentDefinitionNode)
    ]
    while pending:
        for selection in pending.pop().selections:
            if isinstance(selection, FieldNode):
                for argument in selection.arguments or ():
                    if argument.name.value in _COST_ARGUMENTS:
                        names.update(_variables_in(argument.value))
                if selection.selection_set is not None:
                    pending.append(selection.selection_set)
            elif isinstance(selection, InlineFragmentNode):
                pending.append(selection.selection_set)
    return frozenset(names)


def _variables_in(value: ValueNode) -> Iterable[str]:
    if isinstance(value, VariableNode):
        yield value.name.value
    elif isinstance(value, ListValueNode):
        for item in value.values:
            yield from _variables_in(item)


def cost_variable_key(names: Iterable[str], variables: Mapping[str, Any] | None) -> Hashable:
    """A small hashable stand-in for the values of ``names`` in ``variables``: two requests
    with equal keys get the same estimate. Values the estimate cannot use collapse into one
    marker each, so a key stays a few items long however large the values sent."""
    sent = variables or {}
    return tuple(_freeze(sent[name]) if name in sent else _MISSING for name in sorted(names))


def _freeze(value: Any) -> Hashable:
    if value is None:
        return None
    if isinstance(value, bool):
        return ("bad",)  # never a valid first or provider
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return ("int", value) if 0 <= value <= MAX_FIRST else ("bad",)
    if isinstance(value, str):
        return ("str", value) if _provider_name(value) is not None else ("bad",)
    if isinstance(value, list):
        items = [_provider_name(item) for item in value]
        if any(item is None for item in items):
            return ("bad-list",)
        return ("list", frozenset(items))
    return ("bad",)
