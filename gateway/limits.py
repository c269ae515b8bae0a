"""Query cost limits: a maximum selection depth, checked during validation.

``max_depth_rule(n)`` returns one validation-rule class per limit, built once at start-up, so
validation results stay cacheable (a rule class made per request would defeat any cache keyed on
the rules). Violations carry ``extensions.code = QUERY_TOO_COMPLEX``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
)

from gateway.errors import ErrorCode

__all__ = ["max_depth_rule"]


def _depth(
    selection_set: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    visiting: frozenset[str],
) -> int:
    if selection_set is None:
        return 0
    deepest = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            if selection.name.value.startswith("__"):
                continue  # introspection meta-fields are bounded by the schema itself
            deepest = max(deepest, 1 + _depth(selection.selection_set, fragments, visiting))
        elif isinstance(selection, InlineFragmentNode):
            deepest = max(deepest, _depth(selection.selection_set, fragments, visiting))
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in visiting:
                continue  # unknown or cyclic: other validation rules report these
            deepest = max(deepest, _depth(fragment.selection_set, fragments, visiting | {name}))
    return deepest


@cache
def max_depth_rule(max_depth: int) -> type[ValidationRule]:
    class MaxDepthRule(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            context: ValidationContext = self.context
            fragments = {
                d.name.value: d
                for d in context.document.definitions
                if isinstance(d, FragmentDefinitionNode)
            }
            depth = _depth(node.selection_set, fragments, frozenset())
            if depth > max_depth:
                name = node.name.value if node.name else "anonymous"
                self.report_error(
                    GraphQLError(
                        f"Operation '{name}' is {depth} levels deep; the limit is {max_depth}",
                        node,
                        extensions={"code": ErrorCode.QUERY_TOO_COMPLEX.value},
                    )
                )

    MaxDepthRule.__name__ = f"MaxDepthRule{max_depth}"
    return MaxDepthRule
