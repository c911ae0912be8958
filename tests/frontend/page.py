"""Driving ComfyUI's web frontend in Debian's Chromium with Playwright: shared by the browser
test (test_frontend.py) and the script that re-saves the shipped workflows through the frontend
(resave.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
READY = ("() => window.app && window.app.graph && window.LiteGraph"
         " && LiteGraph.registered_node_types['MimicTalkLoadAudio'] !== undefined")
LOAD_TIMEOUT_MS = 120_000


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def launch(playwright):
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, chromium_sandbox=False)


class Page:
    """One browser tab on the ComfyUI frontend, recording console errors and failed requests."""

    def __init__(self, browser, server, artefacts: Path, label: str):
        self.server, self.artefacts, self.label = server, artefacts, label
        self.context = browser.new_context(viewport={"width": 1600, "height": 1000})
        self.page = self.context.new_page()
        self.messages: list[str] = []  # every console error, page error and HTTP failure, in order
        self.page.on("console", lambda m: m.type == "error" and self.messages.append(
            f"console: {m.text} @ {m.location.get('url', '')}"))
        self.page.on("pageerror", lambda e: self.messages.append(f"pageerror: {e} {getattr(e, 'stack', '') or ''}"))
        self.responses: list[tuple[int, str]] = []
        self.page.on("response", self._response)
        self.page.goto(server.url, wait_until="domcontentloaded")
        self.page.wait_for_function(READY, timeout=LOAD_TIMEOUT_MS)
        self.page.wait_for_timeout(1000)
        self.baseline = len(self.messages)  # errors of the empty page (none expected; reported if any)

    def _response(self, response) -> None:
        self.responses.append((response.status, response.url))
        if response.status >= 400:
            self.messages.append(f"http {response.status}: {response.url}")

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def command(self, command_id: str) -> None:
        self.js("(id) => window.app.extensionManager.command.execute(id)", command_id)

    def shot(self, name: str) -> Path:
        path = self.artefacts / f"{self.label}_{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def pack_errors(self) -> list[str]:
        """Errors since the empty page was ready that the pack causes: every page error (the Load
        Audio defect was a ``TypeError`` naming no node), every console error other than a failed
        request, every failed request or warning/error toast naming the pack or its files. Failed
        requests elsewhere (a newer frontend polling APIs this server lacks, e.g. 1.58's
        ``/api/jobs``, and its template logos from the internet) are the frontend's and the
        server's; they are kept in ``messages``."""
        toasts = self.js("() => [...document.querySelectorAll('.p-toast-message-error, .p-toast-message-warn')]"
                         ".map(e => e.innerText)")
        found = []
        for m in self.messages[self.baseline:] + [f"toast: {t}" for t in toasts]:
            request = m.startswith(("http ", "console: Failed to ", "toast: ")) or "Failed to fetch" in m
            if "mimictalk" in m.lower() or not request:
                found.append(m)
        return found

    def close(self):
        self.context.close()


# --- what the page holds ----------------------------------------------------------------------

GRAPH_FACTS = """() => {
  const g = window.app.graph;
  const links = g.links instanceof Map ? [...g.links.values()] : Object.values(g.links || {});
  const nodes = g.nodes.map(n => ({
    id: String(n.id), type: n.type, comfyClass: n.constructor.comfyClass || null,
    registered: window.LiteGraph.registered_node_types[n.type] !== undefined,
    hasErrors: !!n.has_errors, title: n.title,
    widgets: (n.widgets || []).map(w => ({name: w.name, value: w.value, type: w.type})),
    inputs: (n.inputs || []).map(i => ({name: i.name, type: i.type, link: i.link})),
  }));
  const slots = links.filter(l => l).map(l => {
    const o = g.getNodeById(l.origin_id), t = g.getNodeById(l.target_id);
    return {id: l.id, type: l.type, out: o && o.outputs[l.origin_slot] ? o.outputs[l.origin_slot].type : null,
            in: t && t.inputs[l.target_slot] ? t.inputs[l.target_slot].type : null,
            inLink: t && t.inputs[l.target_slot] ? t.inputs[l.target_slot].link : null,
            outLinks: o && o.outputs[l.origin_slot] ? (o.outputs[l.origin_slot].links || []) : []};
  });
  return {nodes, links: slots};
}"""

GRAPH_TO_PROMPT = "async () => (await window.app.graphToPrompt()).output"


PREVIEW_WIDGETS = ("audioUI", "video-preview")
"""The frontend's player widgets of Load Audio / Load Video: frontend 1.27 sends ``""`` for them in
every prompt (core nodes too); the servers ignore them, and the API twins leave them out."""


def comparable(prompt: dict) -> dict:
    """``prompt`` as the API twins hold it, less what differs between frontend versions and never
    reaches a node: the ``""`` of :data:`PREVIEW_WIDGETS` (1.27) and ``_meta`` entries other than
    the title (1.58 adds the registry id and version there)."""
    out = json.loads(json.dumps(prompt))
    for node in out.values():
        for name in PREVIEW_WIDGETS:
            if node["inputs"].get(name) == "":
                del node["inputs"][name]
        if "_meta" in node:
            node["_meta"] = {k: v for k, v in node["_meta"].items() if k == "title"}
    return out


def prompt_from_page(page) -> dict:
    return comparable(page.js(GRAPH_TO_PROMPT))


# --- opening ------------------------------------------------------------------------------------


def open_with_file_chooser(page: Page, path: Path) -> None:
    """Workflow > Open: the frontend's file chooser, given ``path``."""
    with page.page.expect_file_chooser(timeout=30_000) as chooser:
        page.command("Comfy.OpenWorkflow")
    chooser.value.set_files(str(path))


# --- the saved form -----------------------------------------------------------------------------

FRONTEND_ONLY = ("MarkdownNote", "Note")
"""Node types the frontend keeps to itself (never in a prompt): the workflows' notes."""


def saved_form(workflow: dict) -> dict:
    """What a re-save through the frontend must keep of a UI workflow: every node's id, type, mode,
    title, position, sockets (name, type, link) and ``widgets_values`` in the frontend's order,
    the links, the groups and the id counters (not the view ``extra.ds``, the frontend's version
    stamp or sizes a frontend recomputes)."""
    def node(n: dict) -> dict:
        return {"id": n["id"], "type": n["type"], "mode": n.get("mode", 0), "title": n.get("title"),
                "pos": [round(float(v)) for v in n["pos"]],
                "inputs": [(i["name"], i["type"], i.get("link")) for i in n.get("inputs") or []],
                "outputs": [(o["name"], o["type"], sorted(o.get("links") or [])) for o in n.get("outputs") or []],
                "widgets_values": n.get("widgets_values")}

    return {"nodes": sorted((node(n) for n in workflow["nodes"]), key=lambda n: n["id"]),
            "links": sorted(tuple(link) for link in workflow["links"]),
            "groups": [(g["title"], [round(float(v)) for v in g["bounding"]]) for g in workflow.get("groups") or []],
            "last_node_id": workflow.get("last_node_id"), "last_link_id": workflow.get("last_link_id")}
