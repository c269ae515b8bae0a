"""Query limits, each linear in the size of the document.

Two kinds of check live here, both run before any resolver and reported with
``extensions.code = QUERY_TOO_COMPLEX`` (the third, the upstream-call estimate, is
``gateway.cost``):

* ``check_query_bytes`` refuses an over-long text before it is parsed: one token (a comment, a
  string) can be any length, so ``max_tokens`` alone lets megabytes through.
* ``check_document`` measures a parsed document's depth, aliases and selections (with fragments
  expanded) *before* graphql-core's specified rules see it. Those rules are quadratic in
  repeated fields (OverlappingFieldsCanBeMergedRule) and walk fragment spreads as often as they
  occur, so a document they would stall on must be refused without running them.

Every walk measures a fragment once and reuses
the figure wherever it is spread, so a fragment spread 2**30 times over still costs one visit of
its text. Each walk counts the selections it visits (``visits``) so that tests can assert on work
done instead of on wall time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)

from gateway.errors import ErrorCode

__all__ = [
    "COUNT_CAP",
    "DocumentMeasure",
    "SelectionStats",
    "check_document",
    "check_query_bytes",
    "too_complex",
]

COUNT_CAP: Final = 1_000_000_000
"""Counts saturate here: a fragment bomb's true selection count has hundreds of digits, and any
figure this large is refused anyway."""


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
