"""
The doctor's verdict: one row per node (a column per link: ✔, the broken link's short reason, "·" where the
link does not apply, "…" after the first broken link of the node), then per broken link one paragraph (node
and link, what was seen, why it breaks pods, the fix: the Finding's message, tasks/engine/findings.py), and
the same as JSON for scripts (``as_json``).
"""

from __future__ import annotations

import json

from tasks.doctor.expected import ExpectedNetwork
from tasks.doctor.links import Broken

HOLDS, NOT_APPLICABLE, NOT_REACHED = "✔", "·", "…"


def first_broken(row: dict[str, Broken | None | str]) -> str | None:
    """The first link of a row that is broken (the one the verdict names)."""
    return next((link for link, cell in row.items() if isinstance(cell, Broken)), None)


def healthy(rows: dict[str, dict[str, Broken | None | str]]) -> bool:
    return all(first_broken(row) is None for row in rows.values())


def table(rows: dict[str, dict[str, Broken | None | str]], links: list[str]) -> list[str]:
    """The verdict's table: a row per node, a column per link."""
    cells = [["node", *links]]
    for name, row in rows.items():
        first = first_broken(row)
        line = [name]
        for link in links:
            cell = row.get(link)
            if first is not None and links.index(link) > links.index(first):
                line.append(NOT_REACHED)
            elif isinstance(cell, Broken):
                line.append(cell.short)
            else:
                line.append(NOT_APPLICABLE if cell == NOT_APPLICABLE else HOLDS)
        cells.append(line)
    widths = [max(len(line[i]) for line in cells) for i in range(len(links) + 1)]
    return ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in cells]


def paragraphs(rows: dict[str, dict[str, Broken | None | str]]) -> list[str]:
    """One paragraph per node's first broken link: node, link, what was seen, why it breaks pods, the fix."""
    said = []
    for row in rows.values():
        first = first_broken(row)
        if first is not None:
            said.append(row[first].finding.message)  # type: ignore[union-attr]
    return said


def render(rows: dict[str, dict[str, Broken | None | str]], links: list[str], notes: dict[str, list[str]],
           exp: ExpectedNetwork) -> str:
    """The whole verdict as text."""
    lines = ["podnet doctor: " + ("every link holds on every node" if healthy(rows) else
                                 f"{sum(1 for r in rows.values() if first_broken(r))} node(s) with a broken link"),
             "expected: " + ", ".join(f"{name} {value}" for name, value in expected_values(exp).items()), ""]
    lines += table(rows, links)
    for paragraph in paragraphs(rows):
        lines += ["", paragraph]
    for name, said in notes.items():
        lines += [f"note: {name}: {note}" for note in said]
    return "\n".join(lines)


def expected_values(exp: ExpectedNetwork) -> dict[str, str]:
    return {"cluster CIDR": ",".join(map(str, exp.cluster_cidrs)), "node mask": ",".join(map(str, exp.node_masks)),
            "backend": exp.backend, "VNI": str(exp.vni), "port": str(exp.port),
            "pod MTU": str(exp.mtu) if exp.mtu else "FLANNEL_MTU", "flanneld": exp.rollout}


def as_json(rows: dict[str, dict[str, Broken | None | str]], links: list[str], notes: dict[str, list[str]],
            exp: ExpectedNetwork) -> str:
    """The verdict for scripts: {"healthy", "links", "nodes": {node: {link: {"state": "holds"|"broken"|
    "not applicable"|"not reached", and for a broken one "short", "seen", "why", "fix"}}}, "notes", "expected"}."""
    nodes = {}
    for name, row in rows.items():
        first = first_broken(row)
        cells = {}
        for link in links:
            cell = row.get(link)
            if first is not None and links.index(link) > links.index(first):
                cells[link] = {"state": "not reached"}
            elif isinstance(cell, Broken):
                cells[link] = {"state": "broken", "short": cell.short, "seen": cell.finding.what,
                               "why": cell.finding.why, "fix": cell.finding.fix}
            else:
                cells[link] = {"state": "not applicable" if cell == NOT_APPLICABLE else "holds"}
        nodes[name] = cells
    return json.dumps({"healthy": healthy(rows), "links": links, "nodes": nodes, "notes": notes,
                       "expected": {**expected_values(exp), "sources": dict(exp.sources)}}, indent=2)
