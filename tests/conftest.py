"""Shared fixtures: the read-only ../shared material, a generated mini-MELD tree, shards built from it once.

Every test is offline and CPU-only. Two tiers:
- `unit` (marked explicitly): pure logic, no media, no weights, no ../shared; `make test-unit`, under a minute.
- everything else is `integration` (marked here): real media, real weights, real Dask clusters, the real
  files in `../shared` (or $AVEMO_SHARED). Without that folder they are skipped, each with the reason.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVEMO_SHARED", REPO.parent / "shared")).resolve()


HAVE_SHARED = (SHARED / "weights").is_dir()

# pytest imports this file as `conftest`; a test that writes `from tests.conftest import ...` must get the same
# module (one session cluster, one set of session fixtures), not a second copy.
sys.modules.setdefault("tests.conftest", sys.modules[__name__])

# Ctrl-C tests need SIGINT to reach Python: a suite started in the background of a non-interactive shell
# (`make test &`, nohup) inherits SIGINT ignored, which every child would inherit too (ignored signals
# survive exec). Restore Python's handler, as a terminal gives it; children then start with the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config):
    if HAVE_SHARED:   # weights for in-process code, subprocesses and Dask workers alike
        os.environ["AVEMO_WEIGHTS_DIR"] = str(SHARED / "weights")
    os.environ.setdefault("AVEMO_CACHE", str(REPO / ".pytest_cache" / "avemo"))


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=f"integration test: needs the shared weights, media and data at {SHARED} "
                                   "(set AVEMO_SHARED)")
    items.sort(key=lambda item: any(item.nodeid.endswith(test) for test in BACKGROUND_TESTS))   # stable
    for item in items:
        if item.get_closest_marker("unit"):
            continue
        item.add_marker(pytest.mark.integration)
        if not HAVE_SHARED:
            item.add_marker(skip)


def make_users_folder(folder: Path) -> Path:
    """A user's project with its own train.py, model.py and pipeline/ + shards/ packages, each of which
    exits loudly if imported: `python -m avemo` and `torchrun -m avemo` must never pick them up."""
    for pkg in ("pipeline", "shards"):
        (folder / pkg).mkdir(parents=True, exist_ok=True)
        (folder / pkg / "__init__.py").write_text("raise SystemExit('the user package was imported')\n")
    for mod in ("train", "model"):
        (folder / f"{mod}.py").write_text("raise SystemExit('the user module was imported')\n")
    return folder


def command(name: str):
    """`avemo NAME` in-process as a function of its argv -> exit code (one-line errors on stderr)."""
    from avemo.cli import main
    return lambda argv: main([name, *argv])


@pytest.fixture(scope="session")
def shared() -> Path:
    return SHARED


@pytest.fixture(scope="session")
def media(shared) -> Path:
    return shared / "media"


def add_real_clips(root: Path, media: Path, split: str, clips: dict[str, str]) -> None:
    """Append rows for real videos (file name in ../shared/media -> emotion) to a mini-MELD split."""
    from avemo.pipeline.layout import CSV_NAMES, VIDEO_DIRS
    from avemo.demo.synth import SENTIMENT_OF
    csv_path = root / CSV_NAMES[split]
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    video_dir = root / VIDEO_DIRS[split][0]
    for i, (name, emotion) in enumerate(clips.items()):
        dia = 900 + i
        shutil.copyfile(media / name, video_dir / f"dia{dia}_utt0.mp4")
        lines.append(f'{len(lines)},"A real clip, {name}",Someone,{emotion},{SENTIMENT_OF[emotion]},{dia},0,1,1,'
                     f'"0:00:01,000","00:00:03,500"')
    csv_path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")


REAL_CLIPS = {"single_face.mp4": "joy", "WolfgangLanger_Pexels.mp4": "sadness", "no_face.mp4": "neutral",
              "fer_test.mp4": "surprise", "face_noface.mov": "fear"}


@pytest.fixture(scope="session")
def mini_meld(tmp_path_factory, media) -> Path:
    """A small MELD-layout tree: generated clips (real photo faces, espeak speech) + the real videos."""
    from avemo.demo.synth import SynthSpec, make_mini_meld
    root = tmp_path_factory.mktemp("mini_meld")
    make_mini_meld(root, SynthSpec(per_class={"train": 3, "dev": 1, "test": 1}, seed=1,
                                   no_face_frac=0.1, no_audio_frac=0.1))
    add_real_clips(root, media, "train", REAL_CLIPS)
    return root


_CLUSTER = None   # the session's in-process Dask cluster, started by the first build that needs it


def session_scheduler() -> str:
    """One in-process Dask cluster (a worker of 2 threads, no worker processes) that the suite's builds share:
    it starts once and the detector loads once, so a test's build costs only its own work. Tests about the
    cluster itself (LocalCluster start and stop, Ctrl-C, killed or faulty workers) start their own."""
    global _CLUSTER
    if _CLUSTER is None:
        from distributed import LocalCluster
        _CLUSTER = LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0",
                                silence_logs=logging.CRITICAL)
    return _CLUSTER.scheduler_address


def pytest_sessionfinish(session, exitstatus):
    if _CLUSTER is not None:
        _CLUSTER.close()
    for proc, folder in _BACKGROUND.values():    # a check whose test did not run (deselected, interrupted)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


# Slow checks that run a tool over the source tree and share nothing with the other tests (mypy: ~35 s of one
# core) start when collection ends, in the background at low priority, and their tests collect the result:
# they fill the cores the suite leaves idle (subprocess waits, single-threaded tests) instead of adding to it.
_BACKGROUND: dict[str, tuple] = {}


def start_background(name: str, cmd: list[str], cwd: Path, folder: Path, niceness: int = 10, **env: str) -> None:
    """Start `cmd` at low priority, its output in a file of `folder` (a pipe nobody reads until its test runs
    would fill and stall it), in its own session (its children are killed with it)."""
    import subprocess
    with open(folder / "background-output.log", "wb") as log:
        # SCHED_IDLE (chrt --idle): the check runs only on a core nothing else wants and yields it at once, which
        # nice alone does not do: the other tests' 2-thread torch ops wait at OpenMP barriers for a thread the
        # scheduler had not yet handed its core back to (measured: training tests 2x slower beside a nice 19 demo)
        prefix = ["chrt", "--idle", "0"] if shutil.which("chrt") else ["nice", "-n", str(niceness)]
        _BACKGROUND[name] = (subprocess.Popen([*prefix, *cmd], cwd=cwd, stdout=log,
                                              stderr=subprocess.STDOUT, env={**os.environ, **env},
                                              start_new_session=True), folder)


def background_folder(name: str) -> Path | None:
    """The folder the check started as `name` writes in (None if it was not started)."""
    return _BACKGROUND[name][1] if name in _BACKGROUND else None


def background_result(name: str, timeout: float = 900, keep: bool = False) -> tuple[int, str] | None:
    """(exit code, output) of the check started as `name`; None if it was not started. Its folder is removed
    unless `keep` (then the caller reads what it wrote there and removes it)."""
    import subprocess
    if name not in _BACKGROUND:
        return None
    proc, folder = _BACKGROUND.pop(name)
    try:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out = (folder / "background-output.log").read_text(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return proc.returncode, out


# the checks started in the background (test id -> name); their tests run last, so the check has the whole
# suite's idle time to finish in
BACKGROUND_TESTS = {"test_layers.py::test_type_check_passes": "mypy",
                    "test_demo.py::test_demo_learns_end_to_end": "demo"}


def demo_command(out: Path) -> list[str]:
    """The README's main job as a user runs it (`make demo`), into `out`."""
    return [sys.executable, "-m", "avemo", "demo", "--out", str(out)]


def pytest_collection_finish(session):
    import tempfile
    ids = {name for item in session.items for test, name in BACKGROUND_TESTS.items() if item.nodeid.endswith(test)}
    if "mypy" in ids:
        from test_layers import type_check_command
        folder = Path(tempfile.mkdtemp(prefix="avemo-mypy-"))
        cmd, cwd, env = type_check_command(folder)
        start_background("mypy", cmd, cwd, folder, **env)
    if "demo" in ids and HAVE_SHARED:
        # the longest single job in the suite (minutes of CPU): at the lowest priority it takes only the CPU
        # the other tests leave idle, and never competes with the timing-sensitive ones
        folder = Path(tempfile.mkdtemp(prefix="avemo-demo-"))
        start_background("demo", demo_command(folder / "demo"), REPO, folder, niceness=19)


# torch's intra-op thread count for every test and fixture that trains: a build in this process (the session
# cluster's threads) sets it to dask.torch_threads, and a run trained with 1 thread is not bit-equal to the same
# run with 2 (the S3 test compares weights with tiny_checkpoint's)
TORCH_THREADS = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def pin_torch_threads() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Each test starts and ends with TORCH_THREADS, whatever a build in a fixture or test set meanwhile."""
    pin_torch_threads()
    yield
    pin_torch_threads()


def build_config(root: Path, out: Path, *overrides: str, shared_cluster: bool = True):
    """The suite's build settings; on the session's cluster unless `shared_cluster=False` (then a LocalCluster
    of 2 worker processes, as a user's build gets). A `scheduler=` override still wins."""
    from avemo.core.config import load_config
    from avemo.pipeline.config import BuildConfig
    cluster = [f"scheduler={session_scheduler()}"] if shared_cluster else []
    return load_config(BuildConfig, "build", None,
                       ["dask.workers=2", *cluster, "shards.max_clips=8", "decode.max_frames=8", *overrides],
                       {"root": str(root), "out": str(out)})


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, built_shards) -> Path:
    """A small checkpoint trained once per session on `built_shards` (tests/tiny_model.py's recipe), for the
    predict, export and hardening tests. Here, not in tiny_model.py: a session fixture imported into several
    test modules is one fixture per module, and trained once in each."""
    from avemo.core.config import load_config
    from avemo.train.config import TrainConfig
    from avemo.train.loop import run_train
    from tiny_model import TINY_TRAIN
    run = tmp_path_factory.mktemp("tiny_run")
    pin_torch_threads()          # built_shards may have just run a build in this process
    cfg = load_config(TrainConfig, "train", None, TINY_TRAIN, {"shards": str(built_shards), "run": str(run)})
    run_train(cfg, log=lambda *a, **k: None)
    return run / "last.pt"


@pytest.fixture(scope="session")
def built_shards(tmp_path_factory, mini_meld) -> Path:
    """Shards of the mini-MELD tree, built once by the real Dask pipeline (the session's cluster)."""
    from avemo.pipeline.build import run_build
    out = tmp_path_factory.mktemp("shards")
    summary = run_build(build_config(mini_meld, out))
    assert summary.shards_failed == 0
    return out
