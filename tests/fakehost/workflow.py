"""UI-format workflows (what ComfyUI saves and ``workflows/`` ships, version 0.4) -> API-format
prompts (what ``/prompt`` and the fake host's executor run), for the pack's nodes and the few core
nodes its workflows use (``executor.CORE_NODES``: their widget order is pinned there).

ComfyUI converts in the browser only (comfyui_conventions.md §4.2); this converter does the same
for our graphs: ``widgets_values`` are positional, one per widget input in schema order, plus the
extra value an INT with ``control_after_generate`` stores after it, plus the values the upload
widgets (and the audio player) append at the end of an upload combo node. A linked input wins
over its widget value. Muted (2) and bypassed (4) nodes are not supported.
"""

from __future__ import annotations

from typing import Any

from tests.fakehost.executor import is_widget

UPLOAD_EXTRAS = {"image_upload": 1, "video_upload": 1, "audio_upload": 2}
"""Values the frontend saves after the widgets of a node with an upload combo: the upload button
(image/video), plus the audio player's empty slot (audio)."""


def widget_slots(schema: Any) -> list[tuple[str, int]]:
    """[(widget input id, values it occupies)] in order (2 with control_after_generate)."""
    return [(i.id, 2 if getattr(i, "control_after_generate", False) else 1) for i in schema.inputs or [] if is_widget(i)]


def upload_extras(schema: Any) -> int:
    extras = 0
    for i in schema.inputs or []:
        upload = getattr(i, "upload", None)
        if upload is not None:
            extras += UPLOAD_EXTRAS[getattr(upload, "value", upload)]
    return extras


def expected_widget_values(schema: Any) -> int:
    return sum(n for _, n in widget_slots(schema)) + upload_extras(schema)


def widget_values(node: dict, schema: Any) -> dict[str, Any]:
    """{widget id: value} of a UI node (raises ValueError on a count mismatch)."""
    values = list(node.get("widgets_values") or [])
    want = expected_widget_values(schema)
    if len(values) != want:
        raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widgets_values, expected {want} "
                         f"({', '.join(n for n, _ in widget_slots(schema)) or 'no widgets'})")
    out, pos = {}, 0
    for name, width in widget_slots(schema):
        out[name] = values[pos]
        pos += width
    return out


def ui_to_api(workflow: dict, nodes: dict[str, tuple[type, Any]]) -> dict[str, dict]:
    """The API-format prompt of a UI workflow; ``nodes`` maps node ids to (class, schema)."""
    if workflow.get("version") not in (0.4, 0.4e0):
        raise ValueError(f"only version 0.4 UI workflows are supported, got {workflow.get('version')!r}")
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt: dict[str, dict] = {}
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']} ({node['type']}) is muted or bypassed (mode {node['mode']})")
        if node["type"] not in nodes:
            raise ValueError(f"node {node['id']}: unknown node type {node['type']!r}")
        schema = nodes[node["type"]][1]
        inputs: dict[str, Any] = dict(widget_values(node, schema))
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), int(link[2])]
        order = [i.id for i in schema.inputs or []]
        prompt[str(node["id"])] = {
            "inputs": {k: inputs[k] for k in order if k in inputs},
            "class_type": node["type"],
            "_meta": {"title": node.get("title") or schema.display_name or node["type"]},
        }
    return prompt
