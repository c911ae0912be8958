"""Train Adapter's run folders: a run is resumed only by its own identity (issue 12 item 1), the
default run name is the identity's own, refusals name the node's widgets, and a Real3D-Portrait
renderer is refused (issue 12 item 7)."""

from __future__ import annotations

import pytest

from tests.nodes.harness import lib, submodule
from tests.nodes.test_nodes import RENDERER, call, nodes  # noqa: F401  (fixture)

TRAIN = dict(steps=1, lr=1e-3, lr_triplane=0.1, lora_rank=2, lora_mode="secc2plane_sr", batch_size=1, seed=0,
             perceptual_loss=False, resume=True, auto_download=False)


@pytest.fixture(scope="module")
def base_and_face(nodes):  # noqa: F811
    (base,) = call(nodes.LoadRenderer, **RENDERER)
    (face,) = call(nodes.LoadFaceModel, auto_download=False)
    return base, face


def _person(seed: int):
    from tests.adapt.synthetic import synthetic_identity

    identity = synthetic_identity(64, frames=6, seed=seed)
    identity.meta["source"] = f"C:\\clips\\person {seed}.mp4"
    return identity


def test_default_run_name_is_the_identitys_own(pack, nodes, base_and_face):  # noqa: F811
    train = submodule(pack, "nodes.train")
    schema = nodes.TrainAdapter.define_schema()
    run_name = next(i for i in schema.inputs if i.id == "run_name")
    assert run_name.default == train.AUTO_RUN_NAME == "auto"
    resume = lib(pack, "adapt.resume")
    a, b = resume.default_run_name(_person(11)), resume.default_run_name(_person(12))
    assert a.startswith("person_11-") and b.startswith("person_12-") and a != b
    assert train.RUN_NAME.fullmatch(a) and resume.default_run_name(_person(11)) == a  # stable, a valid folder name
    same_name = _person(12)
    same_name.meta["source"] = _person(11).meta["source"]
    assert resume.default_run_name(same_name) != a  # same file name, other person: other folder


def test_second_person_is_refused_in_the_nodes_terms(pack, nodes, base_and_face):  # noqa: F811
    base, face = base_and_face
    call(nodes.TrainAdapter, renderer=base, identity=_person(21), face_model=face, run_name="shared_run", **TRAIN)
    with pytest.raises(lib(pack, "errors").InputError) as e:
        call(nodes.TrainAdapter, renderer=base, identity=_person(22), face_model=face, run_name="shared_run", **TRAIN)
    msg = str(e.value)
    assert msg.startswith("Train Adapter: run_name 'shared_run'") and "another identity (same length, other content)" in msg
    assert "turn resume off" in msg and "train_adapter" not in msg and "work_dir" not in msg
    # with the default name each person gets a run of their own and trains
    adapter, _ = call(nodes.TrainAdapter, renderer=base, identity=_person(22), face_model=face, run_name="auto", **TRAIN)
    assert adapter.metadata["training"]["steps_done"] == 1


def test_real3d_renderer_is_refused(pack, nodes, base_and_face):  # noqa: F811
    (real3d,) = call(nodes.LoadRenderer, **dict(RENDERER, weights="tiny/real3d_renderer"))
    with pytest.raises(lib(pack, "errors").InputError, match="Real3D-Portrait renderer.*weights = mimictalk_base_renderer"):
        call(nodes.TrainAdapter, renderer=real3d, identity=_person(31), face_model=base_and_face[1], run_name="auto", **TRAIN)
