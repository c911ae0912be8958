"""The shipped workflows in ComfyUI's own web frontend, in a real browser (issue 19).

A real ComfyUI server with the pack and the tiny weights (tests/e2e/comfy_server.py) serves its
frontend to Debian's Chromium driven by Playwright (``executable_path``: Playwright's own browser
downloads do not work on our machines). Each shipped workflow is opened the two ways a user opens
it: Workflow > Open (the frontend's file chooser) and the templates browser (its card, which must
show our thumbnail). After each load: no error caused by the pack in the console or the page; every
node built by the frontend as the registered type (no red stand-in); node and link counts equal the
file's; every link's slot types match; the widget values equal the API twin's by name; and
``app.graphToPrompt()`` equals the API twin (tests/workflows/api). Every workflow
is then queued from the page with the Run button (after setting the tiny weights in their widgets,
as a user picks files) and must finish with ``success`` and show their result in the page: the video
of talk, one-shot and dub, the preview image of evaluate (metrics plot) and personalise (training
report).

Runs when ``COMFYUI_DIR`` is set and a Chromium (``CHROMIUM``, default ``chromium`` on PATH) and
the ``playwright`` package are present; skips with the reason otherwise (fails in CI).
``COMFYUI_FRONTEND_ROOT`` tests another frontend build. Screenshots go to
``MIMICTALK_ARTEFACTS`` (default: a folder under pytest's temp dir, printed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e.comfy_server import PACK_FOLDER, skip_or_fail
from tests.frontend.page import (
    GRAPH_FACTS, LOAD_TIMEOUT_MS, Page, chromium_path, launch, open_with_file_chooser, prompt_from_page,
    saved_form, comparable,
)
from tests.dub.test_dub_node import DUB_OVERRIDES
from tests.nodes.harness import TINY_OVERRIDES, WORKFLOWS, load_twin, load_workflow, with_overrides
from tests.workflows.test_workflows import EVALUATE_OVERRIDES

NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
RUN_FROM_PAGE = {  # what the page changes before Run besides the tiny weights, and what the run must show in it
    "mimictalk_talk": ({}, ("video", "MimicTalk Video Combine")),
    "mimictalk_one_shot": ({"MimicTalkLoadRenderer": {"weights": "tiny/real3d_renderer"}},
                           ("video", "MimicTalk Video Combine")),
    "mimictalk_dub": (DUB_OVERRIDES, ("video", "MimicTalk Dub Video")),
    "mimictalk_evaluate": (EVALUATE_OVERRIDES, ("image", "Metrics plot")),
    "mimictalk_personalise": ({"MimicTalkTrainAdapter": {"run_name": "page", "holdout_seconds": 0.2, "validate_every": 1},
                               "MimicTalkSaveAdapter": {"name": "page_person", "overwrite": True}},
                              ("image", "Training report")),
}
"""Every shipped workflow is queued from the page (issue 19: every node of the pack is covered
through its workflow): its video plays in the page, or its preview image is shown there."""


def test_every_workflow_is_run_from_the_page():
    assert sorted(RUN_FROM_PAGE) == NAMES  # a new workflow is run from the page too


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("MIMICTALK_ARTEFACTS") or tmp_path_factory.mktemp("frontend_artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nfrontend screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser():
    if not chromium_path():
        skip_or_fail("no Chromium found (install Debian's 'chromium' or set CHROMIUM to its path)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("the 'playwright' package is not installed (pip install -r requirements-test.txt)")
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page_factory(browser, comfy_server, artefacts):
    pages = []

    def make(label: str) -> Page:
        pages.append(Page(browser, comfy_server, artefacts, label))
        return pages[-1]

    yield make
    for p in pages:
        p.close()


def check_loaded(page: Page, name: str) -> None:
    """The graph in the page is the shipped workflow, fully built, and converts to its API twin."""
    wf, twin = load_workflow(name), load_twin(name)
    page.page.wait_for_function(f"() => window.app.graph.nodes.length === {len(wf['nodes'])}", timeout=LOAD_TIMEOUT_MS)
    page.page.wait_for_timeout(500)
    facts = page.js(GRAPH_FACTS)
    assert not page.pack_errors(), page.pack_errors()
    for n in facts["nodes"]:  # built as the registered node, not a red "missing" stand-in
        assert n["registered"] and not n["hasErrors"], (name, n["type"], n["title"])
        assert all(w["name"] != "UNKNOWN" for w in n["widgets"]), (name, n["type"], n["widgets"])
    assert len(facts["nodes"]) == len(wf["nodes"]) and len(facts["links"]) == len(wf["links"]), name
    for link in facts["links"]:
        assert link["type"] == link["out"] == link["in"] and link["inLink"] == link["id"] \
            and link["id"] in link["outLinks"], (name, link)
    by_id = {n["id"]: n for n in facts["nodes"]}
    for node_id, api in twin.items():  # widget values by name
        widgets = {w["name"]: w["value"] for w in by_id[node_id]["widgets"]}
        for key, value in api["inputs"].items():
            if not isinstance(value, list):
                assert key in widgets and widgets[key] == value, (name, api["class_type"], key, widgets.get(key), value)
    assert prompt_from_page(page) == twin, name


def open_from_templates(page: Page, name: str) -> None:
    """The templates browser: our category, our card with its thumbnail shown, clicked."""
    page.command("Comfy.BrowseTemplates")
    try:
        dialog = page.page.get_by_role("dialog")
        dialog.wait_for(timeout=30_000)
        # our category in the dialog's navigation (1.27: Custom Nodes, 1.58: Extensions); it is
        # listed after the core ones have loaded, so it is waited for, not looked up once
        nav = dialog.get_by_text(PACK_FOLDER, exact=True).first
        nav.wait_for(timeout=30_000)
        nav.click()
        card = dialog.locator(f"[data-testid='template-workflow-{name}']")
        thumb = card.locator("img")
        thumb.first.wait_for(timeout=30_000)
        page.page.wait_for_function("(img) => img.complete && img.naturalWidth > 0",
                                    arg=thumb.first.element_handle(), timeout=30_000)
        # the card shows our file (the frontend fetches it, then shows it from a blob: URL)
        assert (200, f"{page.server.url}/api/workflow_templates/{PACK_FOLDER}/{name}.jpg") in page.responses
    except Exception:
        page.shot("templates_failed")
        (page.artefacts / f"{page.label}_templates_failed.html").write_text(page.page.content())
        raise
    page.shot("templates")
    card.first.click()


@pytest.mark.slow  # a server start, a browser and the frontend's first load: ~1 min on 2 cores
@pytest.mark.parametrize("name", NAMES)
def test_workflow_opens_from_the_file_menu(name, page_factory):
    page = page_factory(f"open_{name}")
    open_with_file_chooser(page, WORKFLOWS / f"{name}.json")
    check_loaded(page, name)
    # saved in the frontend's own form: re-saved by the frontend version that wrote the file, it
    # changes nothing but the view (other versions may add their own fields)
    saved = page.js("async () => (await window.app.graphToPrompt()).workflow")
    if saved["extra"].get("frontendVersion") == load_workflow(name)["extra"]["frontendVersion"]:
        assert saved_form(saved) == saved_form(load_workflow(name)), name
    page.shot("graph")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_workflow_opens_from_the_templates_browser(name, page_factory):
    page = page_factory(f"template_{name}")
    open_from_templates(page, name)
    check_loaded(page, name)
    page.shot("graph")


SET_WIDGETS = """([values]) => {
  for (const n of window.app.graph.nodes) {
    for (const [name, value] of Object.entries(values[n.type] || {})) {
      const w = (n.widgets || []).find(w => w.name === name);
      if (!w) throw new Error(`no widget ${name} on ${n.type}`);
      w.value = value;
      if (w.callback) w.callback(value);
    }
  }
  window.app.graph.setDirtyCanvas(true, true);
}"""

SHOWN_VIDEO = """(file) => [...document.querySelectorAll('video')]
  .some(v => decodeURIComponent(v.currentSrc || v.src || '').includes(file) && v.readyState >= 1)"""

SHOWN_IMAGE = """([id, file]) => { const n = window.app.graph.getNodeById(id);
  return !!(n && n.imgs && n.imgs.some(i => decodeURIComponent(i.src || '').includes(file) && i.complete && i.naturalWidth > 0)); }"""

IN_VIEW = ("(id) => { const c = window.app.canvas; c.ds.scale = 0.8; c.centerOnNode(window.app.graph.getNodeById(id)); "
           "c.setDirty(true, true); }")


@pytest.mark.slow  # tiny weights, but a full graph on the CPU: ~10 s each
@pytest.mark.parametrize("name", sorted(RUN_FROM_PAGE))
def test_workflow_runs_from_the_page_and_shows_its_result(name, page_factory, comfy_server):
    page = page_factory(f"run_{name}")
    open_with_file_chooser(page, WORKFLOWS / f"{name}.json")
    check_loaded(page, name)
    page_overrides, (kind, shown_title) = RUN_FROM_PAGE[name]
    overrides = {k: dict(v) for k, v in TINY_OVERRIDES.items()}
    for cls, values in page_overrides.items():
        overrides.setdefault(cls, {}).update(values)
    page.js(SET_WIDGETS, [overrides])  # as a user picks the (tiny) weights in the widgets
    expected = with_overrides(load_twin(name), overrides)
    assert prompt_from_page(page) == expected
    before = set(comfy_server.get("/history"))
    page.command("Comfy.QueuePrompt")  # the Run button's command
    prompt_id = None
    for _ in range(120):
        queue = comfy_server.get("/queue")
        found = (set(comfy_server.get("/history")) - before) | {q[1] for q in queue["queue_running"] + queue["queue_pending"]}
        if found:
            (prompt_id,) = found
            break
        page.page.wait_for_timeout(500)
    assert prompt_id, "Run in the page queued nothing: " + "\n".join(page.messages)
    entry = comfy_server.wait(prompt_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert {k: (v["class_type"], v["inputs"]) for k, v in comparable(entry["prompt"][2]).items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in expected.items()}
    assert len(entry["prompt"][3]["extra_pnginfo"]["workflow"]["nodes"]) == len(load_workflow(name)["nodes"])
    (node_id,) = [k for k, v in expected.items() if v["_meta"]["title"] == shown_title]
    (saved,) = entry["outputs"][node_id]["images"]
    page.js(IN_VIEW, int(node_id))  # the node in view: the frontend loads shown previews only
    if kind == "video":
        page.page.wait_for_function(SHOWN_VIDEO, arg=saved["filename"], timeout=60_000)
    else:
        page.page.wait_for_function(SHOWN_IMAGE, arg=[int(node_id), saved["filename"]], timeout=60_000)
    if name == "mimictalk_personalise":
        (save_id,) = [k for k, v in expected.items() if v["class_type"] == "MimicTalkSaveAdapter"]
        assert entry["outputs"][save_id]["text"] == ["page_person.safetensors"]
    assert not page.pack_errors(), page.pack_errors()
    page.shot("finished")
    print(json.dumps({"workflow": name, "shown": saved}))
