"""Side by side with upstream: run code from an upstream MimicTalk checkout the user fetched
(``git clone https://github.com/yerfor/MimicTalk``) in a child process, on the same weights,
inputs and thread count as ours, and bring its timings and outputs back.

Nothing of upstream is committed or copied into the pack: the child process imports it at run
time from ``PYTHONPATH=<checkout>`` (our code never edits ``sys.path``). The bench scripts use it
through their ``--upstream PATH`` option:

* parent side: :func:`add_argument`, :func:`checkout` (a clear error when PATH is not an
  upstream checkout), :func:`random_state_dict` (full-size random weights in our layout, which is
  upstream's key layout) and :func:`run` (one child run: inputs and outputs travel as temp
  ``.pt`` files, loaded with ``weights_only=True``);
* child side (the same bench script, started as ``python -m bench.<name> --upstream-child IN
  OUT``): :func:`child_main`, :func:`require` and :func:`stub`.

Upstream imports third-party packages the pack does not depend on. A child calls :func:`require`
for those its timed path runs (the run stops with the ``pip install`` line to type) and
:func:`stub` only for modules the timed path never uses: the stub is an empty module whose
attributes are placeholders that raise when called, so a stub that the timed path did use fails
loudly instead of changing what is measured. Every stub is listed in the child's result
(``stubbed``) and printed by the bench.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]  # the repository root: children run from here
CHILD_FLAG = "--upstream-child"
CLONE_HINT = "git clone https://github.com/yerfor/MimicTalk"
MARKERS = ("inference/mimictalk_infer.py", "modules", "utils/commons")  # any upstream checkout has these


class UpstreamError(Exception):
    """The upstream side cannot run; the message says why and what to do. Bench scripts report
    it as a usage error (``ap.error``, exit status 2)."""

    def __init__(self, message: str):
        super().__init__(f"--upstream: {message}")


# --- parent side ------------------------------------------------------------------------------


def add_argument(ap: argparse.ArgumentParser, what: str) -> None:
    """``--upstream PATH`` (side-by-side mode) and the hidden child entry point."""
    ap.add_argument("--upstream", metavar="PATH", default=None,
                    help=f"an upstream MimicTalk checkout ({CLONE_HINT}): time upstream's {what} and ours "
                    "side by side in this run (same random full-size weights, inputs and threads; CPU fp32) "
                    "and print the ratio and the largest output difference")
    ap.add_argument(CHILD_FLAG, nargs=2, metavar=("IN", "OUT"), default=None, help=argparse.SUPPRESS)


def checkout(path: str | os.PathLike, required: Sequence[str] = ()) -> Path:
    """``path`` resolved, after checking it looks like an upstream MimicTalk checkout holding the
    files (or folders) ``required`` relative to its root; UpstreamError otherwise."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UpstreamError(f"{str(path)!r} is not a folder; pass the folder of an upstream MimicTalk "
                            f"checkout ({CLONE_HINT})")
    missing = [p for p in (*MARKERS, *required) if not (root / p).exists()]
    if missing:
        raise UpstreamError(f"{str(root)!r} is not an upstream MimicTalk checkout: it lacks {', '.join(missing)}. "
                            f"Pass the root folder of a checkout ({CLONE_HINT}), the one holding inference/ "
                            "and modules/.")
    return root.resolve()


def random_state_dict(model: torch.nn.Module, seed: int, scale: float = 0.05, matrix_std: float | None = None,
                      gains: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Make ``model``'s weights full-size random values from ``seed`` and return its state dict.

    Every floating tensor gets ``scale`` N(0, 1) noise added (parameters initialised to constants,
    such as norm gains, zero-initialised projections and null vectors, would otherwise hide code
    paths from a comparison); with ``matrix_std``, weights of two or more dimensions (except
    embedding tables) are drawn from N(0, matrix_std^2) instead; ``gains`` maps a key suffix to a
    value g: those tensors become g (1 + ``scale`` N(0, 1)). BatchNorm running variances are drawn
    from U(0.5, 1.5), running means from 0.1 N(0, 1); RoPE frequencies (``inv_freq``) and integer
    buffers are left as they are. Our key layout is upstream's, so the state dict loads into
    upstream's modules as it is.

    Choose the scales so that the network is not chaotic: a comparison of two implementations is
    only meaningful where fp32 rounding differences are not amplified layer after layer."""
    gen = torch.Generator().manual_seed(seed)
    embeddings = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or name.endswith("inv_freq"):
                continue
            noise = torch.randn(t.shape, generator=gen)
            gain = next((g for suffix, g in (gains or {}).items() if name.endswith(suffix)), None)
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(0.1 * noise)
            elif gain is not None:
                t.copy_(gain * (1 + scale * noise))
            elif matrix_std is not None and t.ndim >= 2 and name not in embeddings:
                t.copy_(matrix_std * noise)
            else:
                t.add_(scale * noise)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run(upstream: Path, script: str, inputs: Mapping[str, object], threads: int,
        timeout: float | None = None) -> dict:
    """Run ``python -m bench.<script> --upstream-child IN OUT`` from the repository root with
    ``PYTHONPATH=<upstream>`` and ``threads`` intra-op threads; ``inputs`` (tensors, numbers,
    strings, lists/dicts of them) go in as IN, the child's result dict comes back from OUT."""
    with tempfile.TemporaryDirectory(prefix="mimictalk_upstream_") as tmp:
        src, dst = Path(tmp) / "in.pt", Path(tmp) / "out.pt"
        torch.save({**inputs, "threads": int(threads)}, src)
        env = dict(os.environ, PYTHONPATH=str(upstream), OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
        cmd = [sys.executable, "-m", f"bench.{script}", CHILD_FLAG, str(src), str(dst)]
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UpstreamError(f"upstream child ({' '.join(cmd[1:4])}) ran past {timeout:.0f} s") from None
        if done.returncode != 0 or not dst.is_file():
            tail = (done.stderr or done.stdout)[-3000:]
            raise UpstreamError(f"upstream child failed (exit {done.returncode}):\n{tail}")
        return torch.load(dst, weights_only=True)


def load_average() -> str:
    """The 1/5/15-minute load averages, for the line printed next to every figure."""
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


# --- child side -------------------------------------------------------------------------------


def require(modules: Iterable[str], why: str) -> None:
    """Stop with the install line when a module upstream's timed path runs is not installed."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UpstreamError(f"upstream's {why} needs {', '.join(missing)}, not installed in this Python "
                            f"({sys.executable}); install it with `{sys.executable} -m pip install "
                            f"{' '.join(missing)}` (upstream's own requirements; the pack does not use them)")


class _Placeholder:
    """What a stubbed module's attributes are: usable as a default value or a base, never called."""

    def __init__(self, qualname: str):
        self._qualname = qualname

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._qualname} is a stub (bench/_upstream.py): the timed upstream path was "
                           "expected not to use it; install the real package")

    def __getattr__(self, name: str) -> "_Placeholder":
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(f"{self._qualname}.{name}")


_STUBBED: list[str] = []


def stub(modules: Iterable[str]) -> list[str]:
    """Put an empty placeholder module in ``sys.modules`` for each of ``modules`` that is not
    installed (only for modules the timed path never uses); returns those stubbed."""
    import importlib.util

    done = []
    for name in modules:
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        mod = types.ModuleType(name, "stub made by bench/_upstream.py; not the real package")
        mod.__getattr__ = lambda attr, _n=name: _Placeholder(f"{_n}.{attr}")  # PEP 562
        sys.modules[name] = mod
        done.append(name)
    _STUBBED.extend(done)
    return done


def child_main(paths: Sequence[str], body: Callable[[dict], dict]) -> None:
    """The child's entry: load IN, set the thread count, run ``body(inputs)`` and save its result
    dict (plus ``stubbed``, the modules replaced by stubs) to OUT."""
    src, dst = paths
    inputs = torch.load(src, weights_only=True)
    torch.set_num_threads(int(inputs["threads"]))
    try:
        result = body(inputs)
    except UpstreamError as exc:
        raise SystemExit(str(exc)) from None  # the message only, exit status 1
    result["stubbed"] = list(_STUBBED)
    torch.save(result, dst)

