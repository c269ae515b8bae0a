"""Query limits, each linear in the size of the document.

Three kinds of check live here, all run before any resolver and all reported with
``extensions.code = QUERY_TOO_COMPLEX``:

* ``check_query_bytes`` refuses an over-long text before it is parsed: one token (a comment, a
  string) can be any length, so ``max_tokens`` alone lets megabytes through.
* ``check_document`` measures a parsed document's depth, aliases and selections (with fragments
  expanded) *before* graphql-core's specified rules see it. Those rules are quadratic in
  repeated fields (OverlappingFieldsCanBeMergedRule) and walk fragment spreads as often as they
  occur, so a document they would stall on must be refused without running them.
* ``estimate_upstream_calls`` is a static estimate, from each provider's ``CallCosts``, of the
  upstream HTTP calls one operation can make, checked against ``max_upstream_calls``.

Every walk measures a fragment (or, for the estimate, a merged group of fields) once and reuses
the figure wherever it is spread, so a fragment spread 2**30 times over still costs one visit of
its text. Each walk counts the selections it visits (``visits``) so that tests can assert on work
done instead of on wall time.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from graphql import (
    BooleanValueNode,
    DocumentNode,
    EnumValueNode,
    FieldNode,
    FloatValueNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
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

from gateway.errors import ErrorCode
from providers.base import CallCosts, ProviderName

__all__ = [
    "COUNT_CAP",
    "DocumentMeasure",
    "SelectionStats",
    "UpstreamCallEstimator",
    "check_document",
    "check_query_bytes",
    "cost_variable_key",
    "cost_variables",
    "estimate_upstream_calls",
    "too_complex",
]

COUNT_CAP: Final = 1_000_000_000
"""Counts saturate here: a fragment bomb's true selection count has hundreds of digits, and any
figure this large is refused anyway."""

DEFAULT_FIRST: Final = 20
"""The schema's default ``first`` of ``organizations`` and ``subscriptions`` (null too)."""
MAX_FIRST: Final = 100
"""``gateway.schema.MAX_PAGE_SIZE``: an unresolvable or out-of-range ``first`` counts as this."""


def too_complex(message: str, node: Any = None) -> GraphQLError:
    return GraphQLError(message, node, extensions={"code": ErrorCode.QUERY_TOO_COMPLEX.value})


def _saturate(count: int) -> int:
    return count if count < COUNT_CAP else COUNT_CAP


def _figure(count: int) -> str:
    return str(count) if count < COUNT_CAP else f"at least {COUNT_CAP}"


def _operation_label(node: OperationDefinitionNode) -> str:
    return node.name.value if node.name else "anonymous"


# --------------------------------------------------------------------------------------------
# Text size
# --------------------------------------------------------------------------------------------


def check_query_bytes(query: str, max_bytes: int) -> GraphQLError | None:
    """QUERY_TOO_COMPLEX when ``query`` is longer than ``max_bytes`` in UTF-8."""
    # A character is 1 to 4 bytes, so nearly every text is decided without encoding it.
    if len(query) * 4 <= max_bytes:
        return None
    size = len(query) if len(query) > max_bytes else len(query.encode("utf-8", "surrogatepass"))
    if size <= max_bytes:
        return None
    return too_complex(f"The document is {size} bytes long; the limit is {max_bytes}")


# --------------------------------------------------------------------------------------------
# Depth, aliases and selections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SelectionStats:
    depth: int
    """Deepest field nesting; introspection fields (``__schema`` ...) add nothing, the schema
    bounds them."""
    aliases: int
    """Aliased fields, a fragment's counted once per spread."""
    selections: int
    """Fields, inline fragments and fragment spreads once every spread is replaced by its
    fragment: what the specified rules (and execution) end up walking."""


_NOTHING = SelectionStats(0, 0, 0)


class DocumentMeasure:
    """``SelectionStats`` of every operation of one document, each fragment measured once.

    ``selections`` is the document's total: its operations', plus those of fragments no
    operation spreads (validation walks and compares them too, before reporting them unused).
    A spread of an unknown fragment or one closing a cycle counts as empty: the specified rules
    report those. May raise ``RecursionError`` on absurd nesting."""

    def __init__(self, document: DocumentNode) -> None:
        self.fragments: dict[str, FragmentDefinitionNode] = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self.visits = 0
        self._memo: dict[str, SelectionStats] = {}
        self._on_path: set[str] = set()
        self.operations: list[tuple[OperationDefinitionNode, SelectionStats]] = [
            (d, self._selection_set(d.selection_set))
            for d in document.definitions
            if isinstance(d, OperationDefinitionNode)
        ]
        reached = set(self._memo)
        total = sum(stats.selections for _, stats in self.operations)
        for name in self.fragments:
            if name not in reached:
                total += self._fragment(name).selections
        self.selections = _saturate(total)

    def _fragment(self, name: str) -> SelectionStats:
        stats = self._memo.get(name)
        if stats is not None:
            return stats
        fragment = self.fragments.get(name)
        if fragment is None or name in self._on_path:
            return _NOTHING
        self._on_path.add(name)
        stats = self._selection_set(fragment.selection_set)
        self._on_path.discard(name)
        self._memo[name] = stats
        return stats

    def _selection_set(self, node: SelectionSetNode) -> SelectionStats:
        depth = aliases = selections = 0
        for selection in node.selections:
            self.visits += 1
            selections += 1
            if isinstance(selection, FieldNode):
                if selection.alias is not None:
                    aliases += 1
                inner = (
                    self._selection_set(selection.selection_set)
                    if selection.selection_set is not None
                    else _NOTHING
                )
                if not selection.name.value.startswith("__"):
                    depth = max(depth, 1 + inner.depth)
            elif isinstance(selection, InlineFragmentNode):
                inner = self._selection_set(selection.selection_set)
                depth = max(depth, inner.depth)
            elif isinstance(selection, FragmentSpreadNode):
                inner = self._fragment(selection.name.value)
                depth = max(depth, inner.depth)
            else:  # pragma: no cover - the three selection kinds of the spec
                continue
            aliases += inner.aliases
            selections += inner.selections
        return SelectionStats(depth, _saturate(aliases), _saturate(selections))


def check_document(
    document: DocumentNode, *, max_depth: int, max_aliases: int, max_selections: int
) -> list[GraphQLError]:
    """The limits a parsed document breaks (empty when none); one linear walk of its text."""
    try:
        measure = DocumentMeasure(document)
    except RecursionError:
        return [too_complex("The document nests selections too deeply")]
    errors: list[GraphQLError] = []
    if measure.selections > max_selections:
        errors.append(
            too_complex(
                f"The document has {_figure(measure.selections)} selections once its fragments "
                f"are expanded; the limit is {max_selections}"
            )
        )
    for operation, stats in measure.operations:
        label = _operation_label(operation)
        if stats.depth > max_depth:
            errors.append(
                too_complex(
                    f"Operation '{label}' is {stats.depth} levels deep; the limit is {max_depth}",
                    operation,
                )
            )
        if stats.aliases > max_aliases:
            errors.append(
                too_complex(
                    f"Operation '{label}' has {_figure(stats.aliases)} aliased fields; "
                    f"the limit is {max_aliases}",
                    operation,
                )
            )
    return errors


# --------------------------------------------------------------------------------------------
# Upstream-call estimate
# --------------------------------------------------------------------------------------------

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
