"""Mutation testing of the numerical core, on demand (not part of CI): ``mutmut`` changes one
operator, constant or call at a time in a module and runs the tests that reach the changed
function; a mutant the tests do not notice "survives". docs/mutation.md records the last run.

    pip install mutmut==3.8.1
    python -m tests.mutation                       # every target below
    python -m tests.mutation volume losses         # some of them
    python -m tests.mutation --list

Each target is a module with the test files that exercise it. The run happens in a temporary copy
of the committed tree (``git archive HEAD``), so nothing is written into the repository; the
printout is a markdown table (mutants, killed, survived, timeouts, score per target) followed by
the diff of every surviving mutant. ``--max-children`` sets the parallel test processes (default:
the CPU count). Expect minutes per target on a small machine; ``resume`` trains tiny renderers.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TARGETS: dict[str, tuple[str, list[str]]] = {
    "volume": ("mimictalk_lib/renderer/volume.py",
               ["tests/renderer/test_volume.py", "tests/renderer/test_volume_reference.py"]),
    "losses": ("mimictalk_lib/adapt/losses.py", ["tests/adapt/test_losses.py"]),
    # resume: the training tests that save or load checkpoints, not all of test_train.py (every
    # mutant of the RNG helpers reaches every training step; the rest of that file adds ~10 s per
    # surviving mutant and checks nothing of resume.py the selected ones miss)
    "resume": ("mimictalk_lib/adapt/resume.py",
               ["tests/adapt/test_resume.py",
                "tests/adapt/test_train.py::test_resume_reproduces_an_uninterrupted_run",
                "tests/adapt/test_train.py::test_interrupt_keeps_a_usable_adapter_and_a_resumable_checkpoint",
                "tests/adapt/test_train.py::test_out_of_memory_saves_and_explains",
                "tests/adapt/test_validation.py::test_resume_keeps_the_validation_history"]),
    "lora": ("mimictalk_lib/lora/layers.py", ["tests/lora/test_peft_layers.py", "tests/lora/test_renderer_lora.py"]),
    "sampler": ("mimictalk_lib/a2m/sampler.py", ["tests/a2m/test_a2m_sampler.py"]),
    "camera": ("mimictalk_lib/face/camera.py", ["tests/face/test_camera_keypoints.py", "tests/face/test_camera_reference.py"]),
}

COUNTS = ("killed", "survived", "timeout", "no tests", "suspicious", "skipped", "segfault", "not checked")


def _mutmut(work: Path, *args: str, check: bool = True) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=work, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if check and proc.returncode != 0:
        raise SystemExit(f"mutmut {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return proc.stdout


def run_target(name: str, max_children: int) -> dict:
    module, tests = TARGETS[name]
    with tempfile.TemporaryDirectory(prefix=f"mutation-{name}-") as tmp:
        work = Path(tmp)
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, check=True, stdout=subprocess.PIPE).stdout
        subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
        (work / "__init__.py").unlink()  # the ComfyUI entry point; the library and its tests run without it
        (work / "setup.cfg").write_text(
            "[mutmut]\n"
            "source_paths=mimictalk_lib\n"
            f"only_mutate={module}\n"
            # setup.cfg lists: one item per line
            "pytest_add_cli_args_test_selection=\n" + "".join(f" {t}\n" for t in tests) +
            "pytest_add_cli_args=\n -p\n no:randomly\n -q\n -x\n"
            # what tests read besides the code (mutmut copies only the sources and tests/)
            "also_copy=docs\n README.md\n models_manifest.json\n workflows\n requirements.txt\n requirements-test.txt\n",
            encoding="utf-8",
        )
        start = time.monotonic()
        log = _mutmut(work, "run", "--max-children", str(max_children), check=False)
        seconds = time.monotonic() - start
        results = _mutmut(work, "results", "--all", "true", check=False)
        status = dict(re.findall(r"^\s*(\S+): (.+)$", results, flags=re.M))
        counts = {c: sum(1 for s in status.values() if s == c) for c in COUNTS}
        survivors = {m: _mutmut(work, "show", m, check=False) for m, s in status.items() if s in ("survived", "no tests")}
    total = len(status)
    checked = total - counts["no tests"] - counts["not checked"] - counts["skipped"]
    if not checked:  # e.g. the unmutated tests failed in the copy: mutmut checked nothing
        raise SystemExit(f"{name}: no mutant was checked; mutmut said:\n{log[-3000:]}")
    score = (counts["killed"] + counts["timeout"]) / checked if checked else float("nan")
    return dict(name=name, module=module, tests=tests, total=total, counts=counts, score=score,
                seconds=seconds, survivors=survivors)


def _diff_lines(show: str) -> str:
    return "\n".join(line for line in show.splitlines()
                     if line[:1] in "+-" and not line.startswith(("+++", "---")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="*", help=f"targets (default: all): {', '.join(TARGETS)}")
    p.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    p.add_argument("--list", action="store_true", help="list the targets and their tests")
    args = p.parse_args(argv)
    if args.list:
        for name, (module, tests) in TARGETS.items():
            print(f"{name:8s} {module}  <- {' '.join(tests)}")
        return 0
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        p.error(f"unknown targets {unknown}; choose from {list(TARGETS)}")
    runs = [run_target(t, args.max_children) for t in (args.targets or list(TARGETS))]
    print("| target | module | mutants | killed | survived | timeout | no tests | score | time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        c = r["counts"]
        print(f"| {r['name']} | `{r['module']}` | {r['total']} | {c['killed']} | {c['survived']} | {c['timeout']} | "
              f"{c['no tests']} | {100 * r['score']:.1f} % | {r['seconds'] / 60:.1f} min |")
    for r in runs:
        for mutant, show in r["survivors"].items():
            print(f"\n{mutant} ({r['name']}):\n{_diff_lines(show)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
