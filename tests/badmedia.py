"""Small real media files made with ffmpeg's lavfi sources, good and deliberately broken, and a MELD-layout
tree that points rows at them, and process helpers (process groups, a real Dask cluster). Shared by the
tests (not a test module)."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
          "Season", "Episode", "StartTime", "EndTime"]
SMALL = "160x120"


def ffmpeg(*args: str) -> None:
    """Run ffmpeg with an argument list; fail loudly with its last message line."""
    proc = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {proc.stderr.strip()[-300:]}")


H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
AAC = ["-c:a", "aac", "-ar", "16000"]


def clip(path: Path, seconds: float = 2.0, size: str = SMALL, rate: int = 10, audio: str | None = "sine",
         video: bool = True, extra: tuple[str, ...] = ()) -> Path:
    """testsrc2 video + `audio` ("sine", "anullsrc" for digital silence, or None) of `seconds`."""
    args: list[str] = []
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc2=s={size}:r={rate}:d={seconds}"]
    if audio == "sine":
        args += ["-f", "lavfi", "-i", f"sine=f=330:sample_rate=16000:d={seconds}"]
    elif audio == "anullsrc":
        args += ["-f", "lavfi", "-i", f"anullsrc=r=16000:cl=mono:d={seconds}"]
    args += (H264 if video else []) + (AAC if audio else []) + ["-t", f"{seconds}", *extra, "file:" + str(path)]
    ffmpeg(*args)
    return path


def quadrant_clip(path: Path, rotate: int | None = None, seconds: float = 1.0) -> Path:
    """320x240 black frames with a red top-left quadrant; `rotate` writes the mp4 display matrix."""
    src = f"color=c=black:s=320x240:r=10:d={seconds},drawbox=x=0:y=0:w=160:h=120:color=red:t=fill"
    meta = ["-metadata:s:v:0", f"rotate={rotate}"] if rotate is not None else []
    ffmpeg("-f", "lavfi", "-i", src, *H264, *meta, "file:" + str(path))
    return path


def vfr_clip(path: Path) -> Path:
    """Variable frame rate: 1 s at 30 fps, then 30 frames at 10 fps (4 s in all), timestamps kept."""
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=s={SMALL}:r=30:d=2,setpts='if(lt(N,30),N/30/TB,(1+(N-30)/10)/TB)'",
           "-fps_mode", "passthrough", *H264, "file:" + str(path))
    return path


def one_frame_clip(path: Path) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=s={SMALL}:r=25", "-frames:v", "1", *H264, "file:" + str(path))
    return path


def truncated_clip(path: Path, source: Path, keep: float = 0.4) -> Path:
    """The first `keep` of a normal (moov-at-end) mp4: the index is missing."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def random_bytes(path: Path, n: int = 50_000, seed: int = 0) -> Path:
    path.write_bytes(random.Random(seed).randbytes(n))
    return path


def write_csv(path: Path, rows: list[list], encoding: str = "utf-8", header: list[str] = HEADER) -> None:
    with open(path, "w", encoding=encoding, newline="") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)


def csv_row(sr: int, dia, utt, emotion: str = "joy", sentiment: str = "positive", text: str = "Hello there",
            speaker: str = "Ross", start: str = "0:00:01,000", end: str = "0:00:03,000") -> list:
    return [sr, text, speaker, emotion, sentiment, dia, utt, 1, 1, start, end]


def link_clip(video_dir: Path, dia: int, utt: int, target: Path) -> None:
    """MELD names files by ids; a symlink lets any real file name (spaces, quotes, `-i.mp4`) stand behind one."""
    video_dir.mkdir(parents=True, exist_ok=True)
    (video_dir / f"dia{dia}_utt{utt}.mp4").symlink_to(target)


def avemo(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """The installed CLI as a user runs it."""
    return subprocess.run([sys.executable, "-m", "avemo", *args], capture_output=True, text=True, cwd=REPO,
                          **kwargs)


def start_group(cmd: list[str], log: Path, cwd: Path = REPO, **kwargs) -> subprocess.Popen:
    """A process in its own session/process group, so the test can SIGKILL it with all its children."""
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=cwd, **kwargs)


def kill_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGKILL the whole process group (Dask nannies and workers included) and wait until it is gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)
    deadline = time.time() + timeout
    while time.time() < deadline and group_alive(proc.pid):
        time.sleep(0.05)
    assert not group_alive(proc.pid), f"processes of group {proc.pid} survived SIGKILL"


def group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # pgrp, state (zombies are dead, just not reaped)
            return True
    return False


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None,
             interval: float = 0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: "
                                 f"{log.read_text(errors='replace')[-2000:] if log else ''}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def visible_files(folder: Path) -> dict[str, bytes]:
    """Non-hidden files under `folder` (relative name -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def hidden_temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*.tmp-*"))


DASK = str(Path(sys.executable).parent / "dask")    # the venv's own dask CLI


@dataclass
class DaskCluster:
    address: str
    client: object                  # distributed.Client, connected for the cluster's lifetime
    workers: list                   # one Popen per `dask worker` (its own process group: nanny + worker)
    logs: Path                      # scheduler.log, worker{i}.log


@contextlib.contextmanager
def dask_cluster(tmp: Path, worker_args: list[list[str]]):
    """A real `dask scheduler` and one `dask worker --nworkers 1 --nthreads 1` per entry of worker_args (its
    extra flags) on 127.0.0.1, each in its own process group; everything is SIGKILLed at the end. Port 0:
    the OS picks free ports and the scheduler file says which."""
    from distributed import Client
    info = tmp / "scheduler.json"
    procs = [start_group([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                          "--scheduler-file", str(info)], tmp / "scheduler.log", cwd=tmp)]
    client = None
    try:
        wait_for(lambda: info.is_file() and info.stat().st_size, 60, "the scheduler file", procs[0],
                 tmp / "scheduler.log")
        address = json.loads(info.read_text())["address"]
        for i, extra in enumerate(worker_args):
            # --death-timeout: a worker whose scheduler is gone exits by itself
            procs.append(start_group([DASK, "worker", address, "--nworkers", "1", "--nthreads", "1",
                                      "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}",
                                      "--death-timeout", "60", *extra], tmp / f"worker{i}.log", cwd=tmp))
        client = Client(address, timeout="30s")
        client.wait_for_workers(len(worker_args), timeout=120)
        yield DaskCluster(address, client, procs[1:], tmp)
    finally:
        if client is not None:
            client.close()
        for proc in reversed(procs):
            kill_group(proc)
