"""Messages in the user's terms (issue 12 item 5): a library error names the library's functions;
reached through a node it names the node and widget instead (``in_node``, shown by
``nodes.messages.node_terms``); counts agree in number; a photo is not called a clip."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mimictalk_lib.errors import AssetMissingError, InputError
from mimictalk_lib.identity.checks import check_length
from mimictalk_lib.identity.clip import find_crop
from mimictalk_lib.identity.landmarks import check_model_file
from mimictalk_lib.utils import count
from tests.nodes.harness import lib, submodule
from tests.nodes.test_nodes import call, nodes  # noqa: F401  (fixture)


def test_count_agrees_in_number():
    assert [count(n, "frame") for n in (0, 1, 2)] == ["0 frames", "1 frame", "2 frames"]


def test_short_clip_names_the_function_in_the_library_and_the_node_input_in_nodes():
    with pytest.raises(InputError) as e:
        check_length(1, "clip")
    assert "(1 frame at 25 fps)" in str(e.value) and "prepare_photo_identity" in str(e.value)
    assert "Prepare Identity's images input" in e.value.in_node and "prepare_photo_identity" not in e.value.in_node


class NoFace:
    def detect(self, frames, video=False, on_step=None):
        n = frames.shape[0]
        return SimpleNamespace(num_faces=torch.zeros(n, dtype=torch.long), detected=torch.zeros(n, dtype=torch.bool),
                               points=torch.zeros(n, 478, 3))


def test_a_photo_without_a_face_is_not_called_a_clip():
    with pytest.raises(InputError) as e:
        find_crop(torch.zeros(1, 64, 64, 3, dtype=torch.uint8), NoFace(), "photo")
    msg = str(e.value)
    assert msg == "photo: no face found. The image needs one clearly visible, roughly frontal face.", msg
    with pytest.raises(InputError, match="no face found in any of the 3 frames checked. The clip needs"):
        find_crop(torch.zeros(3, 64, 64, 3, dtype=torch.uint8), NoFace(), "clip")


def test_missing_mediapipe_file_names_the_cli_or_the_widget(tmp_path):
    with pytest.raises(AssetMissingError) as e:
        check_model_file(tmp_path / "face_landmarker.task", "MediaPipe face landmarker", "mediapipe_face_landmarker")
    assert "python -m mimictalk_lib.download fetch mediapipe_face_landmarker" in str(e.value)
    assert "downloader node" not in str(e.value)
    assert "auto_download on Prepare Identity" in e.value.in_node


def test_node_terms_rewords_only_errors_that_have_a_node_wording(pack):
    messages, errors = submodule(pack, "nodes.messages"), lib(pack, "errors")
    with pytest.raises(errors.AssetMissingError) as e:
        with messages.node_terms():
            raise errors.AssetMissingError("library words", in_node="node words")
    assert str(e.value) == "node words" and str(e.value.__cause__) == "library words"
    assert isinstance(e.value, FileNotFoundError)  # same type: callers' except clauses still match
    plain = errors.InputError("only one wording")
    with pytest.raises(errors.InputError) as e:
        with messages.node_terms():
            raise plain
    assert e.value is plain


def test_prepare_identity_shows_the_node_wording(pack, nodes, fake_mediapipe):  # noqa: F811
    (face,) = call(nodes.LoadFaceModel, auto_download=False)
    two_frames = torch.rand(2, 64, 64, 3)
    with pytest.raises(lib(pack, "errors").InputError) as e:
        call(nodes.PrepareIdentity, face_model=face, images=two_frames, fps=25.0, crop="auto",
             missing_faces="drop", fit_iterations=2, auto_download=False)
    msg = str(e.value)
    assert "(2 frames at 25 fps)" in msg and "Prepare Identity's images input" in msg
    assert "prepare_photo_identity" not in msg


def test_load_adapter_names_the_node_for_files_that_are_not_adapters(pack, nodes, tiny):  # noqa: F811
    """A safetensors file that is no adapter (a converted renderer, say) picked in Load Adapter: the
    node's wording (the .ckpt route in the node), not the library function; a .ckpt of random bytes
    picked there: not a checkpoint or damaged, never 'weights_only'."""
    from mimictalk_lib.adapt.adapter import load_adapter
    from mimictalk_lib.checkpoint import save_safetensors
    from mimictalk_lib.errors import CheckpointError

    folder = tiny["models"] / "adapters" / "not_adapters"
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / "model.safetensors", {"w": torch.zeros(2)}, {"format": "renderer"})
    (folder / "random.ckpt").write_bytes(torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(0),
                                                       dtype=torch.uint8).numpy().tobytes())
    errors = lib(pack, "errors")
    with pytest.raises(errors.CheckpointError) as e:
        call(nodes.LoadAdapter, adapter="not_adapters/model.safetensors")
    msg = str(e.value)
    assert msg.startswith("Load Adapter: adapter ") and "is not a MimicTalk adapter (metadata format 'renderer')" in msg
    assert "Save Adapter" in msg and ".ckpt" in msg and "import_official_checkpoint" not in msg, msg
    with pytest.raises(CheckpointError, match="imported with import_official_checkpoint"):  # the library's terms
        load_adapter(folder / "model.safetensors")
    with pytest.raises(errors.CheckpointError) as e:
        call(nodes.LoadAdapter, adapter="not_adapters/random.ckpt")
    msg = str(e.value)
    assert "not an upstream" in msg and "damaged" in msg and "weights_only" not in msg and "safe loader" not in msg, msg


def test_apply_adapter_names_its_check_base_widget(pack, nodes, tiny):  # noqa: F811
    from mimictalk_lib.adapt.adapter import check_base
    from mimictalk_lib.errors import CheckpointError

    (base,) = call(nodes.LoadRenderer, weights="tiny/mimictalk_renderer", precision="auto", auto_download=False)
    (adapter,) = call(nodes.LoadAdapter, adapter="person.safetensors")
    adapter.base_probe = adapter.base_probe + 1.0  # as if trained on other base weights
    with pytest.raises(lib(pack, "errors").CheckpointError) as e:
        call(nodes.ApplyAdapter, renderer=base, adapter=adapter, check_base=True)
    msg = str(e.value)
    assert msg.startswith("Apply Adapter: ") and "turn check_base off" in msg and "check_base=False" not in msg, msg
    with pytest.raises(CheckpointError, match="pass check_base=False"):  # the library's terms
        check_base(adapter, base.module())


PLURAL_NOUNS = ("frames", "tries", "renders", "masks", "transforms", "timestamps")
NEVER_ONE = {  # (file, expression): numbers that cannot be 1 here, or a size rather than a count
    ("mimictalk_lib/identity/frames.py", "max_count"),  # frames per 10 s at the highest frame rate accepted
    ("mimictalk_lib/evaluate/syncnet.py", "WINDOW + 1"),  # SyncNet's 6-frame window
    ("mimictalk_lib/dub/pasteback.py", "t.source_hw[0]"),  # "{W}x{H} frames": a frame size
}


def test_no_message_puts_a_number_straight_before_a_plural_noun(repo_root):
    """'1 frames': every f-string that formats a number directly before one of these nouns goes
    through utils.count (or the number cannot be 1). Scans the library and the nodes."""
    import ast
    import re

    found = []
    for path in sorted([*(repo_root / "mimictalk_lib").rglob("*.py"), *(repo_root / "nodes").rglob("*.py")]):
        rel = path.relative_to(repo_root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.JoinedStr):
                continue
            for value, after in zip(node.values, node.values[1:]):
                if (isinstance(value, ast.FormattedValue) and value.format_spec is None
                        and isinstance(after, ast.Constant) and re.match(rf" ({'|'.join(PLURAL_NOUNS)})\b", after.value)
                        and (rel, ast.unparse(value.value)) not in NEVER_ONE):
                    found.append(f"{rel}:{node.lineno}: {{{ast.unparse(value.value)}}}{after.value[:20]}")
    assert found == [], "use utils.count for these: " + "; ".join(found)


def test_a_dub_report_of_one_frame_says_frame():
    from mimictalk_lib.dub.dub import DubReport

    one = DubReport(frames=1, fps=25.0, width=64, height=64, audio_seconds=0.04, source_frames=1, no_face_frames=1,
                    length_mode="loop", passes=1.0, warnings=[])
    assert one.summary().startswith("dubbed 1 frame (0.04 s) at 25 fps, 64x64; source 1 frame played 1.00x (loop); "
                                    "1 frame without a face kept untouched"), one.summary()


def test_a_file_that_is_no_identity_names_the_function_and_the_node(tmp_path):
    from mimictalk_lib.checkpoint import save_safetensors
    from mimictalk_lib.errors import CheckpointError
    from mimictalk_lib.identity import Identity

    save_safetensors(tmp_path / "x.safetensors", {"w": torch.zeros(1)}, {"format": "mimictalk-adapter"})
    with pytest.raises(CheckpointError, match=r"is not a MimicTalk identity file .* prepare_identity\(\) "
                                              r"\(in ComfyUI: the Prepare Identity node\)"):
        Identity.load(tmp_path / "x.safetensors")
