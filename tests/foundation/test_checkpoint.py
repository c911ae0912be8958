"""Safe checkpoint loading: legacy upstream pickles only through torch.load(weights_only=True),
safetensors with JSON metadata for our own files."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from mimictalk_lib.checkpoint import (
    checkpoint_steps,
    find_latest_checkpoint,
    load_legacy_checkpoint,
    load_model_state_dict,
    load_safetensors,
    model_state_dict,
    read_safetensors_metadata,
    resolve_model_file,
    save_safetensors,
)
from mimictalk_lib.errors import CheckpointError


def upstream_like(model: dict) -> dict:
    """What upstream's trainer writes (mimictalk_architecture.md §6), with plain objects only."""
    return {
        "epoch": 7,
        "global_step": 100000,
        "checkpoint_callback_best": np.float64(0.25),  # a numpy scalar, as np.less/np.Inf can leave
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                              "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.98), "params": [0]}]}],
        "state_dict": {"model": model, "disc": {"w": torch.ones(1)}},
    }


class Sneaky:
    """Unpickling this for real would create a file: the safe loader must never do that."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-pickle", "zip"])
def test_upstream_checkpoint_loads_with_weights_only(tmp_path, legacy):
    model = {"decoder.net.0.weight": torch.randn(4, 3), "decoder.net.0.bias": torch.randn(4)}
    path = tmp_path / "model_ckpt_steps_100000.ckpt"
    torch.save(upstream_like(model), path, _use_new_zipfile_serialization=not legacy)
    ckpt = load_legacy_checkpoint(path)
    assert ckpt["global_step"] == 100000 and float(ckpt["checkpoint_callback_best"]) == 0.25
    sd = model_state_dict(ckpt, source=str(path))
    assert sd.keys() == model.keys() and all(torch.equal(sd[k], model[k]) for k in model)


def test_old_numpy_spelling_is_accepted(tmp_path):
    """Pickles written under numpy 1.x name numpy.core.multiarray instead of numpy._core."""
    path = tmp_path / "a.ckpt"
    torch.save(upstream_like({"w": torch.ones(2)}), path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert float(load_legacy_checkpoint(path)["checkpoint_callback_best"]) == 0.25


class PlainRecord:
    """A harmless custom class: still not something an upstream checkpoint contains."""

    def __init__(self):
        self.note = "hello"


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-pickle", "zip"])
def test_custom_class_is_refused_clearly(tmp_path, legacy):
    ckpt = upstream_like({"w": torch.ones(2)})
    ckpt["extra"] = PlainRecord()
    path = tmp_path / "custom.ckpt"
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match=r"not an upstream .*checkpoint, or it is damaged \(it contains `[\w.]*PlainRecord`") as err:
        load_legacy_checkpoint(path)
    assert "never unpickles anything else" in str(err.value) and "weights_only" not in str(err.value)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-pickle", "zip"])
def test_code_in_a_pickle_never_runs(tmp_path, legacy):
    marker = tmp_path / "pwned"
    ckpt = upstream_like({"w": torch.ones(2)})
    ckpt["extra"] = Sneaky(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="not an upstream .*checkpoint, or it is damaged"):
        load_legacy_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_foreign_files_give_clear_errors(tmp_path):
    path = tmp_path / "model_ckpt_steps_1.ckpt"
    torch.save(upstream_like({"w": torch.randn(1000)}), path)
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_legacy_checkpoint(path)
    torch.save(torch.ones(3), path)
    with pytest.raises(CheckpointError, match="expected a checkpoint dict"):
        load_legacy_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_legacy_checkpoint(tmp_path / "nope.ckpt")


def test_model_state_dict_layouts_and_refusals():
    flat = {"state_dict": {"model.a.weight": torch.ones(1), "model.b": torch.zeros(1), "disc.x": torch.ones(1)}}
    assert set(model_state_dict(flat)) == {"a.weight", "b"}
    with pytest.raises(CheckpointError, match="no 'state_dict'.*optimizer-only"):
        model_state_dict({"optimizer_states": [{}], "epoch": 1})
    with pytest.raises(CheckpointError, match="no 'model' weights.*disc"):
        model_state_dict({"state_dict": {"disc": {"x": torch.ones(1)}}})


def test_latest_checkpoint_is_the_highest_step_number(tmp_path):
    for n in (9, 100000, 20000):
        (tmp_path / f"model_ckpt_steps_{n}.ckpt").write_bytes(b"x")
    (tmp_path / "model_ckpt_best.pt").write_bytes(b"x")
    (tmp_path / "model_ckpt_steps_5.ckpt.part").write_bytes(b"x")
    assert find_latest_checkpoint(tmp_path).name == "model_ckpt_steps_100000.ckpt"
    assert checkpoint_steps("model_ckpt_steps_1856000.ckpt") == 1856000
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model_ckpt_steps"):
        find_latest_checkpoint(tmp_path / "empty")


def test_model_weights_from_a_file_or_folder(tmp_path):
    """A folder gives its converted model.safetensors when present, else its latest upstream
    checkpoint; either way the 'model' tensors come back."""
    ckpt_dir, conv_dir = tmp_path / "upstream", tmp_path / "converted"
    ckpt_dir.mkdir()
    for n, value in ((10, 1.0), (200, 2.0)):
        torch.save({"state_dict": {"model": {"w": torch.full((2,), value)}, "disc": {"x": torch.ones(1)}}},
                   ckpt_dir / f"model_ckpt_steps_{n}.ckpt")
    assert resolve_model_file(ckpt_dir).name == "model_ckpt_steps_200.ckpt"
    assert torch.equal(load_model_state_dict(ckpt_dir)["w"], torch.full((2,), 2.0))
    assert set(load_model_state_dict(ckpt_dir / "model_ckpt_steps_10.ckpt")) == {"w"}
    save_safetensors(conv_dir / "model.safetensors", {"w": torch.full((2,), 3.0)})
    (conv_dir / "model_ckpt_steps_5.ckpt").write_bytes(b"not used")
    assert resolve_model_file(conv_dir) == conv_dir / "model.safetensors"
    assert torch.equal(load_model_state_dict(conv_dir)["w"], torch.full((2,), 3.0))


def test_safetensors_round_trip_with_metadata_and_aliases(tmp_path):
    w = torch.randn(3, 5)
    tensors = {"conv.weight": w, "conv.conv.weight": w, "t": w.t(), "half": torch.randn(2).half()}
    meta = {"kind": "adapter", "config": {"rank": 2, "modes": ["a", "b"]}, "steps": 2000}
    path = save_safetensors(tmp_path / "sub" / "x.safetensors", tensors, meta)
    assert not [p for p in path.parent.iterdir() if p.name != "x.safetensors"]  # no temp file left
    loaded, got = load_safetensors(path)
    assert got == meta == read_safetensors_metadata(path)
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) and loaded[k].dtype == tensors[k].dtype for k in tensors)
    with pytest.raises(CheckpointError, match="'bad'.*not a tensor"):
        save_safetensors(tmp_path / "y.safetensors", {"bad": np.ones(2)})


def test_foreign_safetensors_metadata_is_returned_raw(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.ones(1)}, str(tmp_path / "f.safetensors"), metadata={"format": "pt"})
    assert read_safetensors_metadata(tmp_path / "f.safetensors") == {"format": "pt"}
    (tmp_path / "g.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_safetensors_metadata(tmp_path / "g.safetensors")


# --- hand-crafted hostile pickles (issue 21 item 1) -------------------------------------------------
#
# Each is written opcode by opcode as a complete legacy torch file (magic number, protocol, sys
# info, the object, no storages) whose object is an upstream-looking dict with the payload under
# 'checkpoint_callback_best'. Loading runs in a child process: a crafted numpy object can corrupt
# the interpreter (seen: SystemError, "import of builtins halted", a segfault), which a refusal
# inside this test process would not reveal.

import pickle  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402


def _str(s: str) -> bytes:
    b = s.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(b)) + b


def _bytes(b: bytes) -> bytes:
    """bytes as protocol 2 spells them (torch's restricted unpickler has no BINBYTES opcode):
    _codecs.encode(latin-1 text, 'latin1')."""
    return _global("_codecs", "encode") + _tuple(_str(b.decode("latin1")), _str("latin1")) + pickle.REDUCE


def _int(i: int) -> bytes:
    return pickle.BININT + struct.pack("<i", i)


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _tuple(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def _dtype(code: str, state: bytes) -> bytes:
    """numpy.dtype(code, False, True) then BUILD with ``state`` (opcodes of a tuple)."""
    return (_global("numpy", "dtype") + _tuple(_str(code), pickle.NEWFALSE, pickle.NEWTRUE) + pickle.REDUCE
            + state + pickle.BUILD)


def _plain_state(order: str = "<", flags: int = 0) -> bytes:
    return _tuple(_int(3), _str(order), pickle.NONE, pickle.NONE, pickle.NONE, _int(-1), _int(-1), _int(flags))


def _ndarray(dtype: bytes, shape: tuple, data: bytes) -> bytes:
    """numpy's own array pickle: _reconstruct(ndarray, (0,), b'b') then BUILD (1, shape, dtype, False, data)."""
    return (_global("numpy._core.multiarray", "_reconstruct")
            + _tuple(_global("numpy", "ndarray"), _tuple(_int(0)), _bytes(b"b")) + pickle.REDUCE
            + _tuple(_int(1), _tuple(*(_int(n) for n in shape)) if all(n < 2**31 for n in shape)
                     else _tuple(*(pickle.LONG1 + bytes([8]) + n.to_bytes(8, "little", signed=True) for n in shape)),
                     dtype, pickle.NEWFALSE, data)
            + pickle.BUILD)


def _scalar(dtype: bytes, data: bytes, module: str = "numpy._core.multiarray") -> bytes:
    return _global(module, "scalar") + _tuple(dtype, _bytes(data)) + pickle.REDUCE


def legacy_file(payload: bytes) -> bytes:
    """A complete legacy torch file holding {'global_step': 1, 'checkpoint_callback_best': payload,
    'state_dict': {}}."""
    import torch.serialization as ts

    header = b"".join(pickle.dumps(x, protocol=2) for x in (
        ts.MAGIC_NUMBER, ts.PROTOCOL_VERSION,
        {"protocol_version": ts.PROTOCOL_VERSION, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    obj = (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK + _str("global_step") + _int(1)
           + _str("checkpoint_callback_best") + payload + _str("state_dict") + pickle.EMPTY_DICT
           + pickle.SETITEMS + pickle.STOP)
    return header + obj + pickle.dumps([], protocol=2)


OBJECT_FLAGS = 0x3F  # NPY_ITEM_REFCOUNT | NPY_ITEM_HASOBJECT | NPY_LIST_PICKLE | ...: "this dtype holds pointers"
HOSTILE = {
    # a one-byte numeric dtype told it holds object pointers, then an array of it from a list
    "object_flag_dtype_array_from_list": _ndarray(_dtype("u1", _plain_state("|", OBJECT_FLAGS)), (3,),
                                                   pickle.EMPTY_LIST + pickle.MARK + _str("a") + _str("b") + _str("c") + pickle.APPENDS),
    "object_flag_dtype_scalar": _scalar(_dtype("u1", _plain_state("|", OBJECT_FLAGS)), b"\x07"),
    "ndarray_from_list": _ndarray(_dtype("f8", _plain_state()), (2,),
                                  pickle.EMPTY_LIST + pickle.MARK + _str("x") + _int(1) + pickle.APPENDS),
    "huge_shape": _ndarray(_dtype("f8", _plain_state()), (2**40, 2**40), _bytes(b"\0" * 8)),
    "overflowing_shape": _ndarray(_dtype("f8", _plain_state()), (2**62, 4), _bytes(b"\0" * 8)),
    "malformed_dtype_state_short": _scalar(_dtype("f8", _tuple(_int(3), _str("<"))), b"\0" * 8),
    "malformed_dtype_state_not_tuple": _scalar(_dtype("f8", _str("garbage")), b"\0" * 8),
    "malformed_dtype_state_fields": _scalar(_dtype("f8", _tuple(_int(3), _str("<"), pickle.NONE, _tuple(_str("a")),
                                                                  pickle.EMPTY_DICT, _int(8), _int(1), _int(0))), b"\0" * 8),
    "object_dtype_scalar": _scalar(_dtype("O8", _plain_state("|", OBJECT_FLAGS)), b"\0" * 8),
    "structured_dtype_code": _scalar(_dtype("V8", _plain_state("|")), b"\0" * 8),
    "scalar_with_wrong_byte_count": _scalar(_dtype("f8", _plain_state()), b"\0" * 3),
    "scalar_from_a_list": _global("numpy._core.multiarray", "scalar") + _tuple(
        _dtype("f8", _plain_state()), pickle.EMPTY_LIST) + pickle.REDUCE,
    "dtype_built_twice": _scalar(_dtype("f8", _plain_state()) + _plain_state() + pickle.BUILD, b"\0" * 8),
    "random_bytes_in_pickle": bytes(range(40, 90)),
}

CHILD = textwrap.dedent("""
    import gc, sys
    from mimictalk_lib.checkpoint import load_legacy_checkpoint
    from mimictalk_lib.errors import CheckpointError
    for path in sys.argv[1:]:
        try:
            got = load_legacy_checkpoint(path)
        except CheckpointError as e:
            msg = str(e)
            assert "not an upstream" in msg and "damaged" in msg and "weights_only" not in msg, msg
            print("REFUSED", path)
        except BaseException as e:
            print("RAW", path, type(e).__name__, str(e)[:200])
        else:
            print("LOADED", path, type(got.get("checkpoint_callback_best")).__name__)
    gc.collect()
    import json, decimal, fractions  # the interpreter still imports and runs normally
    print("CHILD-OK", json.dumps(sorted({str(k): k for k in range(50)})[:3]), decimal.Decimal(1) / 4)
""")


def _run_child(paths) -> list[str]:
    import os

    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, paths)], capture_output=True, text=True,
                          timeout=300, cwd=str(pathlib.Path(__file__).resolve().parents[2]),
                          env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    lines = proc.stdout.splitlines()
    assert lines and lines[-1].startswith("CHILD-OK"), proc.stdout + proc.stderr
    return lines[:-1]


def test_hostile_numpy_pickles_are_refused_and_the_process_survives(tmp_path):
    paths = []
    for name, payload in HOSTILE.items():
        path = tmp_path / f"{name}.ckpt"
        path.write_bytes(legacy_file(payload))
        paths.append(path)
    for name, path in zip(HOSTILE, paths):  # one child per file: a corrupted interpreter cannot hide a later case
        assert _run_child([path]) == [f"REFUSED {path}"], name


def test_hand_written_plain_numpy_scalars_still_load(tmp_path):
    """The layout upstream writes (checked against numpy's own pickle of np.float64 above): plain
    numbers of each numeric kind come back as Python numbers, in both numpy module spellings."""
    cases = {"f8": (b"\0\0\0\0\0\0\xd0?", 0.25), "f4": (b"\0\0\xc0?", 1.5), "i8": ((3).to_bytes(8, "little"), 3),
             "f2": (b"\0<", 1.0), "b1": (b"\x01", True), "u2": (b"\x01\x02", 513)}
    for code, (data, want) in cases.items():
        for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
            path = tmp_path / f"{code}_{module}.ckpt"
            order = "|" if code in ("b1",) else "<"
            path.write_bytes(legacy_file(_scalar(_dtype(code, _plain_state(order)), data, module)))
            got = load_legacy_checkpoint(path)["checkpoint_callback_best"]
            assert got == want and type(got) is type(want), (code, module, got)
    big = tmp_path / "big_endian.ckpt"
    big.write_bytes(legacy_file(_scalar(_dtype("f8", _plain_state(">")), struct.pack(">d", -2.5))))
    assert load_legacy_checkpoint(big)["checkpoint_callback_best"] == -2.5


def test_numpy_written_checkpoint_loads_in_a_child_with_plain_numbers(tmp_path):
    """What upstream's trainer writes (numpy's own pickle of np.float64 in checkpoint_callback_best,
    pytorch-lightning style keys) loads, and the scalar comes back as a Python float."""
    path = tmp_path / "model_ckpt_steps_100000.ckpt"
    torch.save(upstream_like({"w": torch.ones(2)}), path, _use_new_zipfile_serialization=False)
    assert _run_child([path]) == [f"LOADED {path} float"]


def test_random_bytes_say_not_a_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(20):
        path = tmp_path / f"r{i}.ckpt"
        path.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
        with pytest.raises(CheckpointError, match="is not an upstream .*checkpoint, or it is damaged") as err:
            load_legacy_checkpoint(path)
        assert "weights_only" not in str(err.value)


def test_a_storage_size_claim_beyond_the_file_is_refused_without_eating_memory(tmp_path):
    """A legacy file whose tensor storage claims 2·10^9 floats (8 GB) but holds 3: CheckpointError
    in a child limited to 3 GB of address space, which then exits normally."""
    path = tmp_path / "big.ckpt"
    torch.save({"state_dict": {"model": {"w": torch.ones(3)}}}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    at = raw.index(b"cpuq\nK\x03N") + 5  # numel 3 in the persistent id ('storage', FloatStorage, key, 'cpu', 3)
    path.write_bytes(raw[:at] + pickle.LONG1 + b"\x08" + (2 * 10**9).to_bytes(8, "little") + raw[at + 2:])
    script = "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n" + CHILD
    import os

    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300,
                          cwd=str(pathlib.Path(__file__).resolve().parents[2]), env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0] == f"REFUSED {path}" and proc.stdout.splitlines()[-1].startswith("CHILD-OK")
