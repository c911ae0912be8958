"""Re-save the shipped workflows through ComfyUI's web frontend (run on demand, not a test):

    COMFYUI_DIR=... COMFYUI_PYTHON=... python -m tests.frontend.resave [name ...]

For each ``workflows/<name>.json`` it starts the real server with the pack and tiny weights
(tests/e2e/comfy_server.py), opens the file through Workflow > Open in Chromium, lays the graph
out with one group per stage (the columns below) and a note saying what to load where, sets the
view on the note and the first stage, and writes back what the frontend exports: the workflow
(``graphToPrompt().workflow``, the form the frontend saves) and its API twin
(``graphToPrompt().output``, tests/workflows/api/<name>.json). It also draws a thumbnail card
naming the stages (``workflows/<name>.jpg``, served to the templates browser as
``/api/workflow_templates/comfyui-mimictalk/<name>.jpg``; DejaVu Sans where installed). Running
it again changes nothing but Load Video's height (frontend 1.27 grows it to its preview on load).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from tests.e2e.comfy_server import server_in
from tests.frontend.page import FRONTEND_ONLY, Page, launch, open_with_file_chooser, comparable
from tests.nodes.harness import API_TWINS, WORKFLOWS

THUMB_SIZE = (480, 360, 28)  # width, height, margin
TITLES = {"mimictalk_talk": "Talk", "mimictalk_one_shot": "One shot", "mimictalk_personalise": "Personalise",
          "mimictalk_dub": "Dub a video", "mimictalk_evaluate": "Evaluate"}

PALE_BLUE, GREEN, YELLOW = "#3f789e", "#8A8", "#b58b2a"  # LiteGraph's group colours

STAGES = {  # title, colour, columns of node ids (top to bottom)
    "mimictalk_talk": [
        ("1 · Renderer + your adapter", PALE_BLUE, [[3, 4], [7]]),
        ("2 · Speech → motion", GREEN, [[1, 2], [6]]),
        ("3 · Render → video", YELLOW, [[5, 8], [9]]),
    ],
    "mimictalk_one_shot": [
        ("1 · Your photo → identity", PALE_BLUE, [[1, 2], [6, 7]]),
        ("2 · Speech → motion", GREEN, [[3, 4], [8]]),
        ("3 · Render → video", YELLOW, [[5, 9], [10]]),
    ],
    "mimictalk_dub": [
        ("1 · Your video → identity", PALE_BLUE, [[1, 2, 5], [6, 7]]),
        ("2 · New speech", GREEN, [[3, 4]]),
        ("3 · Dub → video", YELLOW, [[8]]),
    ],
    "mimictalk_evaluate": [
        ("1 · Held-out clip → identity", PALE_BLUE, [[1, 2], [4]]),
        ("2 · Renderer + your adapter", GREEN, [[3, 5], [6]]),
        ("3 · Scores", YELLOW, [[7], [8]]),
    ],
    "mimictalk_personalise": [
        ("1 · Your clip → identity", PALE_BLUE, [[1, 2], [4, 5]]),
        ("2 · Train the adapter", GREEN, [[3], [6], [8]]),
        ("3 · Save it", YELLOW, [[7]]),
    ],
}

WEIGHTS = ("**Weights** go in `ComfyUI/models/mimictalk/`: `auto_download` fetches the public ones, "
           "the README lists every file and where it comes from.")
NOTES = {
    "mimictalk_talk": f"""## MimicTalk · talk
A talking-head video of **your trained person** from any speech.

1. {WEIGHTS}
2. **Load Adapter**: the adapter you trained with the *personalise* workflow, from `models/mimictalk/adapters/`.
3. **Load Audio**: upload the speech (an audio or a video file) or pick one from `ComfyUI/input/`.
4. **Run**. The mp4 with sound is saved in `ComfyUI/output/MimicTalk/` and plays in Video Combine.""",
    "mimictalk_one_shot": f"""## MimicTalk · one shot
A talking head from **one photo** and speech, without training.

1. {WEIGHTS} This workflow renders with `real3dportrait_renderer`.
2. **Load Image**: upload a portrait (one face, looking at the camera).
3. **Load Audio**: upload the speech (an audio or a video file).
4. **Run**. *Identity preview* shows the fitted face; the mp4 is saved in `ComfyUI/output/MimicTalk/`.""",
    "mimictalk_dub": f"""## MimicTalk · dub
Makes the face in **a video** say new speech; the rest of each frame (background, body) stays.

1. {WEIGHTS}
2. **Load the video to dub**: upload a video with one face.
3. **New speech**: upload the speech (an audio or a video file).
4. **Run**. Dub Video saves the mp4 in `ComfyUI/output/MimicTalk/`; its *report* counts frames without a face.""",
    "mimictalk_evaluate": f"""## MimicTalk · evaluate
Scores a trained **adapter** against real frames of the person: PSNR, SSIM and LPIPS (full frame and head), landmarks, lip sync (LSE-D / LSE-C, SyncNet, on the clip's own audio) and identity similarity (CSIM).

1. {WEIGHTS}
2. **Load Video**: a clip of the same person (its held-out end was not used in training).
3. **Load Adapter**: the adapter to score, from `models/mimictalk/adapters/`.
4. **Run**. *Metrics plot* shows per-frame curves and real-above-rendered samples; *table* and *json* hold the numbers.""",
    "mimictalk_personalise": f"""## MimicTalk · personalise
Trains an **adapter** for one person from a short talking clip (one face, seconds to minutes).

1. {WEIGHTS}
2. **Load Video**: upload the clip.
3. **Train Adapter**: `steps` sets the length (2000 as in the paper; a step takes over a minute on a CPU). Cancel keeps a run that `resume` continues.
4. **Run**. Save Adapter writes `models/mimictalk/adapters/<name>.safetensors`: load it in the *talk* workflow.""",
}
NOTE_SIZE = (400, 420)
VIEW_SCALE, VIEW_OFFSET = 0.75, (120, 60)
"""The view saved with the workflow (above 0.6, where the frontend still draws widgets)."""

LAYOUT = """([spec]) => {
  const g = window.app.graph, L = window.LiteGraph;
  for (const grp of [...(g._groups || g.groups || [])]) g.remove(grp);
  for (const n of [...g.nodes]) if (spec.frontendOnly.includes(n.type)) g.remove(n);
  const TITLE = L.NODE_TITLE_HEIGHT, PAD = 20, GAP = 60, GROUP_TITLE = 50, ROW = 30, COLUMN = 40;
  let x = 0;
  const note = L.createNode('MarkdownNote');
  note.id = Math.max(...g.nodes.map(n => Number(n.id))) + 1;
  g.add(note);
  note.title = spec.noteTitle;
  note.widgets[0].value = spec.note;
  note.size = spec.noteSize;
  note.pos = [x, GROUP_TITLE + TITLE];
  x += spec.noteSize[0] + GAP;
  for (const [index, stage] of spec.stages.entries()) {
    const left = x;
    let bottom = 0;
    for (const column of stage.columns) {
      let y = GROUP_TITLE + TITLE, width = 0;
      for (const id of column) {
        const n = g.getNodeById(id);
        n.pos = [x, y];
        y += n.size[1] + TITLE + ROW;
        width = Math.max(width, n.size[0]);
      }
      bottom = Math.max(bottom, y - ROW);
      x += width + COLUMN;
    }
    const grp = new L.LGraphGroup(stage.title);
    grp.color = stage.color;
    g.add(grp);
    grp.id = index + 1;  // stable ids: a second run writes the same file
    grp.pos = [left - PAD, 0];
    grp.size = [x - COLUMN - left + 2 * PAD, bottom + PAD];
    x += GAP;
  }
  const ds = window.app.canvas.ds;  // the saved view: the note and the first stage, readable
  ds.scale = spec.scale;
  ds.offset = spec.offset;
  g.setDirtyCanvas(true, true);
}"""

EXPORT = """async () => {  // as Workflow > Export writes the file, and the API twin
  const p = await window.app.graphToPrompt();
  return {workflow: JSON.stringify(p.workflow, null, 2), output: p.output};
}"""


def resave(page: Page, name: str) -> None:
    open_with_file_chooser(page, WORKFLOWS / f"{name}.json")
    page.page.wait_for_function("() => window.app.graph.nodes.length > 0")
    page.page.wait_for_timeout(1000)
    stages = [{"title": t, "color": c, "columns": cols} for t, c, cols in STAGES[name]]
    page.js(LAYOUT, [{"stages": stages, "note": NOTES[name], "noteTitle": "Read me", "noteSize": list(NOTE_SIZE),
                      "frontendOnly": list(FRONTEND_ONLY), "scale": VIEW_SCALE, "offset": list(VIEW_OFFSET)}])
    page.page.wait_for_timeout(1500)
    if page.pack_errors():
        raise RuntimeError(f"{name}: errors in the page: {page.pack_errors()}")
    page.page.screenshot(path=str(page.artefacts / f"{name}.png"))
    thumbnail(name, WORKFLOWS / f"{name}.jpg")
    exported = page.js(EXPORT)
    (WORKFLOWS / f"{name}.json").write_text(exported["workflow"] + "\n", encoding="utf-8")
    workflow = json.loads(exported["workflow"])
    (API_TWINS / f"{name}.json").write_text(json.dumps(comparable(exported["output"]), indent=1,
                                                       ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{name}: {len(workflow['nodes'])} nodes, {len(workflow['links'])} links, {len(workflow['groups'])} groups, "
          f"frontend {workflow['extra'].get('frontendVersion')}")


def font(size: int, bold: bool = False):
    from PIL import ImageFont

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu"):
        if Path(folder, name).is_file():
            return ImageFont.truetype(str(Path(folder, name)), size)
    return ImageFont.load_default(size)


def thumbnail(name: str, path: Path) -> None:
    """A card for the templates browser: the workflow's name and its stages as the coloured groups
    of the graph (a graph screenshot is unreadable at card size; tiny weights render noise)."""
    from PIL import Image, ImageDraw

    width, height, margin = THUMB_SIZE
    image = Image.new("RGB", (width, height), "#202124")
    draw = ImageDraw.Draw(image)
    draw.text((margin, 20), "MimicTalk", font=font(24), fill="#9fb3c8")
    draw.text((margin, 50), TITLES[name], font=font(44, bold=True), fill="#ffffff")
    stages = STAGES[name]
    top, box, gap = 124, 58, 22
    for i, (title, colour, _) in enumerate(stages):
        y = top + i * (box + gap)
        rgb = tuple(int(c * 0.75) for c in Image.new("RGB", (1, 1), colour).getpixel((0, 0)))
        draw.rounded_rectangle((margin, y, width - margin, y + box), radius=10, fill=rgb)
        draw.text((margin + 16, y + box / 2), title, font=font(22, bold=True), fill="#ffffff", anchor="lm")
        if i + 1 < len(stages):  # an arrow down to the next stage
            cx = width // 2
            draw.polygon([(cx - 9, y + box + 4), (cx + 9, y + box + 4), (cx, y + box + gap - 4)], fill="#cccccc")
    image.save(path, "JPEG", quality=85, optimize=True)


def main(names: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    comfy_dir = Path(os.environ["COMFYUI_DIR"])
    with tempfile.TemporaryDirectory(prefix="mimictalk-resave-") as tmp, server_in(comfy_dir, Path(tmp)) as server, \
            sync_playwright() as p:
        browser = launch(p)
        for name in names or sorted(STAGES):
            page = Page(browser, server, Path(os.environ.get("MIMICTALK_ARTEFACTS", tmp)), name)
            resave(page, name)
            page.close()
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1:])
