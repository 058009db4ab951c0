"""A strict, bounded YAML loader for site files.

PyYAML's SafeLoader is safe from code execution but not from everything a site file can do:

- duplicate keys: it keeps the last one silently, so `interval: 1s` then `interval: 5s` is 5 s
  and nobody is told. Here both lines are named;
- aliases: `&a [*b, *b, ...]` chains expand exponentially ("billion laughs"); the document is
  small, but everything that walks the data afterwards (validation, secrets, line numbers) pays
  for the expansion. A self-referencing alias (`&a [*a]`) makes those walks endless. Here the
  expanded size is counted on the node graph (shared nodes once) before anything walks it;
- nesting: the composer and the constructor recurse once per level, so `[[[[...` a few thousand
  deep ends in RecursionError. Here the depth is checked on the event stream, which PyYAML
  produces without recursion, before composing.

Anything wrong raises `SiteYamlError` with every problem and its line; nothing else escapes.
"""

from __future__ import annotations

from typing import Any, Final

import yaml

Loc = tuple[str | int, ...]

#: Nesting levels of mappings and sequences; a site file needs about eight.
MAX_DEPTH: Final = 64
#: Values that aliases may add to what the file spells out (10,000 cost about 50 ms to check
#: and validate); a site file repeats a few settings blocks, not whole trees.
MAX_EXPANSION: Final = 10_000

_MERGE: Final = "tag:yaml.org,2002:merge"
#: libyaml's parser when PyYAML was built with it: the same events and nodes, 15x faster (85 ms
#: -> 5.4 ms for config/site.example.yaml). Construction stays PyYAML's SafeConstructor.
_LOADER: Final[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SiteYamlError(Exception):
    """The text is not a site file PyYAML can load safely: `(key path, message, line)` each."""

    def __init__(self, problems: list[tuple[Loc, str, int | None]]) -> None:
        self.problems = problems
        super().__init__("; ".join(msg for _, msg, _ in problems))


def _line(mark: Any) -> int | None:
    return mark.line + 1 if mark is not None else None


def _flow_depth(text: str) -> int:
    """The deepest `[`/`{` nesting outside quotes and comments, found without PyYAML: its
    scanner keeps a possible simple key per open bracket and re-checks them all at every
    token, so 5,000 brackets cost it 0.4 s before the first event comes out."""
    depth = deepest = 0
    quote = ""
    prev = "\n"
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and prev in " \t\n":
            end = text.find("\n", i)
            i = n if end < 0 else end
            ch = "\n"
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
        prev = ch
        i += 1
    return deepest


def _check_depth(text: str) -> int:
    """Raise for nesting beyond MAX_DEPTH; returns the number of nodes as written."""
    if text.count("[") + text.count("{") > MAX_DEPTH and _flow_depth(text) > MAX_DEPTH:
        raise SiteYamlError([((), f"nested more than {MAX_DEPTH} levels deep", None)])
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            nodes += 1
            depth += 1
            if depth > MAX_DEPTH:
                raise SiteYamlError(
                    [((), f"nested more than {MAX_DEPTH} levels deep", _line(event.start_mark))]
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
    return nodes


class _Graph:
    """One pass over the composed nodes: duplicate keys, alias expansion, alias cycles."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sizes: dict[int, tuple[int, int]] = {}
        self.open: set[int] = set()
        self.problems: list[tuple[Loc, str, int | None]] = []

    def size(self, node: yaml.Node, loc: Loc) -> tuple[int, int]:
        """(values, levels) under `node`, aliases expanded. Anchors come before their aliases,
        so a walk in document order meets every shared node first where it is defined: the
        recursion stays as deep as the text, however deep the expansion."""
        key = id(node)
        if key in self.sizes:
            return self.sizes[key]
        if key in self.open:
            raise SiteYamlError(
                [(loc, "an alias refers to a node that contains it", _line(node.start_mark))]
            )
        self.open.add(key)
        total, height = 1, 0
        children: list[tuple[yaml.Node, Loc]] = []
        if isinstance(node, yaml.MappingNode):
            self._duplicates(node, loc)
            for k, v in node.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else "?"
                children += [(k, loc), (v, (*loc, name))]
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, (*loc, i)) for i, item in enumerate(node.value)]
        for child, where in children:
            n, h = self.size(child, where)
            total += n
            height = max(height, h)
            if total > self.limit:
                self._fail(
                    node,
                    loc,
                    f"aliases expand the file by more than {MAX_EXPANSION} values "
                    "(an alias bomb?): repeat less, or write the values out",
                )
        if children:
            height += 1
            if height > MAX_DEPTH:
                self._fail(node, loc, f"aliases nest values more than {MAX_DEPTH} levels deep")
        self.open.discard(key)
        self.sizes[key] = (total, height)
        return total, height

    @staticmethod
    def _fail(node: yaml.Node, loc: Loc, message: str) -> None:
        raise SiteYamlError([(loc, message, _line(node.start_mark))])

    def _duplicates(self, node: yaml.MappingNode, loc: Loc) -> None:
        seen: dict[tuple[str, str], int | None] = {}
        for k, _ in node.value:
            if not isinstance(k, yaml.ScalarNode) or k.tag == _MERGE:
                continue
            ident = (k.tag, k.value)
            line = _line(k.start_mark)
            if ident in seen:
                first = seen[ident]
                self.problems.append(
                    (
                        (*loc, k.value),
                        f"duplicate key {k.value!r} (lines {first} and {line}): keep one",
                        line,
                    )
                )
            else:
                seen[ident] = line


def _char_at(text: str, line: int, column: int) -> str:
    """The character a parser error points at (libyaml's message does not name a tab)."""
    lines = text.splitlines()
    return lines[line][column] if line < len(lines) and column < len(lines[line]) else ""


def _not_yaml(text: str, exc: Exception) -> SiteYamlError:
    """The error for a document the parser or the constructor refused, at its line and column."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None and _char_at(text, mark.line, mark.column) == "\t":
        # "found character '\t' that cannot start any token": say what to do about it.
        problem = f"a tab at column {mark.column + 1}: indent with spaces, not tabs"
    elif mark is not None:
        problem += f" (column {mark.column + 1})"
    return SiteYamlError([((), f"not valid YAML: {problem}", _line(mark))])


def load(text: str) -> tuple[yaml.Node | None, Any]:
    """The composed root node (for line numbers) and the data of one YAML document."""
    try:
        written = _check_depth(text)
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character or " ")
        problem = f"character #x{char:04x} is not allowed in YAML ({exc.reason})"
        raise SiteYamlError([((), f"not valid YAML: {problem}", line)]) from None
    except yaml.YAMLError as exc:
        raise _not_yaml(text, exc) from None
    if root is None:
        return None, None
    graph = _Graph(written + MAX_EXPANSION)
    graph.size(root, ())
    if graph.problems:
        raise SiteYamlError(graph.problems)
    try:
        data = yaml.SafeLoader("").construct_document(root)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        # ValueError: a timestamp like 2024-13-45, an int of more than 4300 digits.
        raise _not_yaml(text, exc) from None
    return root, data
