"""
YAML as Kubernetes components read it: the kubelet (static pod manifests), kubeadm (its
configuration and the kubeadm-config ConfigMap), kubectl and the API server.

All of them turn YAML into JSON with sigs.k8s.io/yaml (YAMLToJSON; k8s.io/apimachinery
pkg/util/yaml ToJSON, used by the kubelet's static pod source in pkg/kubelet/config/common.go and
by the YAML serializer kubeadm decodes with), which reads YAML with go-yaml v2
(go.yaml.in/yaml/v2, resolve.go). Its plain scalars are neither YAML 1.1 as PyYAML reads them
nor YAML 1.2:

- booleans: y Y yes Yes YES n N no No NO true True TRUE false False FALSE on On ON off Off OFF;
- null: the empty scalar, ~, null Null NULL; floats .inf .Inf .INF (signed too) and .nan .NaN .NAN;
- numbers: a plain scalar starting with a digit, "+", "-" or "." that Go's strconv.ParseInt(s, 0,
  64) reads after "_" is dropped (0x1F, 0o17, 0b101, and a leading 0 for octal: 0755 is 493), else
  ParseUint, else a float of the form [-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?;
- no base-60 numbers (10:30 is a string, PyYAML reads 630), no "=" value type, and a timestamp
  such as 2001-01-01 stays a string when decoded without a Go type (decode.go);
- "<<" is a merge key.

``load`` reads a document by exactly these rules (PyYAML's parser, go-yaml's scalar resolution);
``compose``/``serialize`` give the node tree for a rewrite that changes chosen nodes only: every
other scalar is written back with its own style, and a new string is written plain only when
go-yaml reads that plain text back as the same string, so no value changes meaning.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"
MERGE = "tag:yaml.org,2002:merge"
# The tag podnet's loader gives every plain scalar: its value is go_resolve's, decided when constructed.
GO_PLAIN = "tag:podnet,2026:go-plain"

_MAP: dict[str, Any] = {}
for _value, _words in ((True, "y Y yes Yes YES true True TRUE on On ON"),
                       (False, "n N no No NO false False FALSE off Off OFF"),
                       (None, "~ null Null NULL"),
                       (math.nan, ".nan .NaN .NAN"),
                       (math.inf, ".inf .Inf .INF +.inf +.Inf +.INF"),
                       (-math.inf, "-.inf -.Inf -.INF")):
    _MAP.update(dict.fromkeys(_words.split(), _value))
_MAP[""] = None
_HINTS = {**dict.fromkeys("+-", "S"), **dict.fromkeys("0123456789", "D"), **dict.fromkeys("yYnNtTfFoO~", "M"),
          ".": "."}
_YAML_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_DOT_FLOAT = re.compile(r"^\.[0-9]+([eE][-+]?[0-9]+)?$")
_GO_INT = re.compile(r"^(?P<sign>[-+]?)(?:0[xX](?P<hex>[0-9a-fA-F]+)|0[oO](?P<oct>[0-7]+)|0[bB](?P<bin>[01]+)"
                     r"|0(?P<old>[0-7]+)|(?P<dec>0|[1-9][0-9]*))$")
INT64 = (-2**63, 2**63 - 1)
UINT64_MAX = 2**64 - 1


def _parse_int(text: str) -> int | None:
    """strconv.ParseInt(text, 0, 64), else strconv.ParseUint(text, 0, 64) (no sign): the value or None."""
    match = _GO_INT.match(text)
    if match is None:
        return None
    for group, base in (("hex", 16), ("oct", 8), ("bin", 2), ("old", 8), ("dec", 10)):
        if match.group(group) is not None:
            number = int(match.group(group), base)
            break
    signed = -number if match.group("sign") == "-" else number
    if INT64[0] <= signed <= INT64[1]:
        return signed
    if not match.group("sign") and signed <= UINT64_MAX:
        return signed
    return None


def _parse_float(text: str) -> float | None:
    """strconv.ParseFloat(text, 64) for the decimal forms resolve passes it; out of range is an error."""
    value = float(text)
    return None if math.isinf(value) else value


def go_resolve(plain: str) -> Any:
    """The value go-yaml v2 gives an untagged plain scalar decoded without a Go type (resolve in
    resolve.go; a timestamp decoded into interface{} stays the string, decode.go): str, int, float,
    bool or None."""
    hint = _HINTS.get(plain[:1], "N" if not plain else None)
    if hint is None:
        return plain
    if plain in _MAP:
        return _MAP[plain]
    if hint == "." and _DOT_FLOAT.match(plain):
        return _parse_float(plain) if _parse_float(plain) is not None else plain
    if hint in "DS":
        digits = plain.replace("_", "")
        number = _parse_int(digits)
        if number is not None:
            return number
        if _YAML_FLOAT.match(digits):
            value = _parse_float(digits)
            if value is not None:
                return value
    return plain


_YAML11 = yaml.resolver.Resolver()


def reads_as_string(text: str) -> bool:
    """Whether ``text`` written as a plain scalar is read back as that same string by go-yaml, and also
    by a YAML 1.1 reader such as PyYAML (so that podnet's output means the same to a tool an operator
    reads it with)."""
    return (text != "<<" and isinstance(go_resolve(text), str) and go_resolve(text) == text
            and _YAML11.resolve(ScalarNode, text, (True, False)) == STR)


_GO_TAGS = {str: STR, int: INT, float: FLOAT, bool: BOOL, type(None): NULL}
# The tag podnet's dumper gives a plain text that go-yaml reads as a string but a YAML 1.1 reader does not
# (10:30, =): such a string is written quoted.
_AMBIGUOUS = "tag:podnet,2026:ambiguous"


class _LoadResolver(yaml.resolver.BaseResolver):
    """Plain scalars are GO_PLAIN (constructed by go_resolve), "<<" is a merge key; quoted scalars are
    strings; explicit tags are kept."""

    def resolve(self, kind, value, implicit):
        if kind is ScalarNode and implicit[0]:
            return MERGE if value == "<<" else GO_PLAIN
        if kind is ScalarNode:
            return STR
        return super().resolve(kind, value, implicit)


class _DumpResolver(yaml.resolver.BaseResolver):
    """What a plain text means to go-yaml (its tag), so that the emitter writes a scalar plain only when
    it is read back with its own tag; a string go-yaml and YAML 1.1 disagree on is quoted."""

    def resolve(self, kind, value, implicit):
        if kind is ScalarNode and implicit[0]:
            if value == "<<":
                return MERGE
            tag = _GO_TAGS[type(go_resolve(value))]
            return _AMBIGUOUS if tag == STR and not reads_as_string(value) else tag
        if kind is ScalarNode:
            return STR
        return super().resolve(kind, value, implicit)


class Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer,
             yaml.constructor.SafeConstructor, _LoadResolver):
    def __init__(self, stream):
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        _LoadResolver.__init__(self)


Loader.add_constructor(GO_PLAIN, lambda loader, node: go_resolve(node.value))


class Dumper(yaml.emitter.Emitter, yaml.serializer.Serializer, _DumpResolver):
    """Serializes a node tree from ``compose``: every scalar keeps its style where that style reads back
    as its tag, else is quoted (PyYAML's emitter also quotes where YAML's syntax needs it, which does not
    change a string)."""

    def __init__(self, stream, **kwargs):
        yaml.emitter.Emitter.__init__(self, stream, width=kwargs.get("width") or 1 << 30,
                                      allow_unicode=True, indent=kwargs.get("indent"))
        yaml.serializer.Serializer.__init__(self, explicit_start=kwargs.get("explicit_start"))
        _DumpResolver.__init__(self)


def load(text: str) -> Any:
    """The document as Kubernetes reads it (YAMLToJSON's values: dict, list, str, int, float, bool, None).
    yaml.YAMLError when it is not YAML."""
    return yaml.load(text, Loader=Loader)  # noqa: S506 (SafeConstructor: no Python objects)


def load_all(text: str) -> list[Any]:
    return list(yaml.load_all(text, Loader=Loader))  # noqa: S506


def compose(text: str) -> yaml.Node | None:
    """The node tree of a one-document text, for a rewrite of chosen nodes (then ``serialize``): every
    plain scalar tagged with what go-yaml reads it as (str, int, float, bool, null)."""
    root = yaml.compose(text, Loader=Loader)
    seen: set[int] = set()
    todo = [root] if root is not None else []
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode) and node.tag == GO_PLAIN:
            node.tag = _GO_TAGS[type(go_resolve(node.value))]
        elif isinstance(node, SequenceNode):
            todo.extend(node.value)
        elif isinstance(node, MappingNode):
            todo.extend(item for pair in node.value for item in pair)
    return root


def serialize(node: yaml.Node) -> str:
    """A node tree from ``compose`` (with nodes made by ``string``/``sequence``/``mapping``) as text."""
    return yaml.serialize(node, Dumper=Dumper)


def string(value: str) -> ScalarNode:
    """A new string node: written plain when go-yaml (and YAML 1.1) read the plain text back as this
    string, else quoted."""
    if not isinstance(value, str):
        raise TypeError(f"a YAML string node needs a str, not {type(value).__name__}")
    return ScalarNode(STR, value)


def sequence(items: list[yaml.Node], like: SequenceNode | None = None) -> SequenceNode:
    """A new sequence node (in the flow or block style of ``like``, when given and not empty)."""
    return SequenceNode("tag:yaml.org,2002:seq", items, flow_style=bool(like is not None and like.value
                                                                        and like.flow_style))


def mapping(pairs: list[tuple[yaml.Node, yaml.Node]], like: MappingNode | None = None) -> MappingNode:
    """A new mapping node (in the flow or block style of ``like``, when given and not empty)."""
    return MappingNode("tag:yaml.org,2002:map", pairs, flow_style=bool(like is not None and like.value
                                                                       and like.flow_style))


def scalar_value(node: yaml.Node) -> Any:
    """A scalar node's value as ``load`` gives it; None for a collection."""
    if not isinstance(node, ScalarNode):
        return None
    if node.style is None and node.tag in (GO_PLAIN, *_GO_TAGS.values()):
        return go_resolve(node.value)
    if node.tag == STR:
        return node.value
    return Loader("").construct_object(node, deep=True)


def get(node: yaml.Node | None, key: str) -> yaml.Node | None:
    """The value node of ``key`` in a mapping node (the last one, as go-yaml keeps for a repeated key)."""
    if not isinstance(node, MappingNode):
        return None
    found = None
    for key_node, value_node in node.value:
        if scalar_value(key_node) == key:
            found = value_node
    return found


def set_value(node: MappingNode, key: str, value: yaml.Node) -> None:
    """Set ``key`` of a mapping node to ``value`` (in place of the existing entries, else appended)."""
    pairs = [(k, v) for k, v in node.value if not scalar_value(k) == key]
    at = next((i for i, (k, _) in enumerate(node.value) if scalar_value(k) == key),
              len(pairs))
    pairs.insert(at, (string(key), value))
    if not node.value:
        node.flow_style = False  # an empty {} that gets its first entry
    node.value[:] = pairs


def container_arg(word: str) -> str:
    """
    A container command or args item that the kubelet runs as exactly ``word``: the kubelet expands
    $(VAR) references in them and reads "$$" as "$" (ExpandContainerCommandAndArgs in
    pkg/kubelet/container/helpers.go, third_party/forked/golang/expansion/expand.go), so every "$" is
    written "$$". A reference podnet means to be expanded is written as such, not through this.
    """
    return word.replace("$", "$$")


def _yaml_raw(c: str) -> bool:
    """A character written as itself inside a double-quoted scalar: in YAML's printable set (c-printable,
    which go-yaml's reader enforces), and neither a line break (YAML 1.1 and go-yaml also break lines at
    U+0085, U+2028 and U+2029, and fold a break in a quoted scalar into a space) nor a byte order mark."""
    o = ord(c)
    return (o == 0x9 or 0x20 <= o <= 0x7E or 0xA0 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD or 0x10000 <= o <= 0x10FFFF) \
        and o not in (0x2028, 0x2029, 0xFEFF)


def flow(value: Any) -> str:
    """
    ``value`` (str, int, float, bool, None, and lists and str-keyed dicts of them) as one YAML flow node
    in JSON syntax, which go-yaml reads back as exactly ``value``: strings double-quoted with JSON's
    escapes, any character outside YAML's printable set and every line break or BOM as \\uXXXX, characters beyond U+FFFF as
    themselves (JSON's surrogate-pair escapes are not YAML escapes). Keys sorted, as Jinja's tojson
    sorts them. ValueError for a NaN or infinite float and for a lone surrogate, which neither JSON nor
    YAML can hold.
    """
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, allow_nan=False)
    out = []
    for c in text:
        if _yaml_raw(c):
            out.append(c)
        elif 0xD800 <= ord(c) <= 0xDFFF:
            raise ValueError(f"{value!r}: a lone surrogate cannot be written in YAML")
        else:
            out.append(f"\\u{ord(c):04x}")
    return "".join(out)
