"""Issue 18, point 7: media lists tried adversarially. Each bad row is one manifest row with a one-line reason,
never a traceback for the whole build, never a wrong `ok`; make-list never lists a file outside ROOT."""
from __future__ import annotations

import csv
import struct
import zlib
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from avemo.pipeline import lists
from avemo.pipeline.media_list import read_media_list
from tests.badmedia import clip, ffmpeg
from tests.conftest import command, session_scheduler

COLUMNS = ["path", "label", "split", "key", "speaker", "start", "end"]


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    """As make-list writes a list (csv module: a field with a line break or a quote is quoted)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return path


def png_bomb(path: Path, side: int = 16000) -> Path:
    """A real 1-bit grey PNG of side x side pixels (256 MP at 16000) in ~40 KB: ffprobe alone used ~800 MB and
    9 s of CPU to read it, and decoding it as many bytes per pixel again."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\x00" + bytes((side + 7) // 8)           # filter byte + one bit per pixel
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.mark.unit
def test_a_list_is_read_as_csv_and_a_bad_row_costs_only_itself(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text('path,label,split\n'
                    '"two\nlines.wav",joy,train\n'      # line 2-3: a quoted line break (make-list writes these)
                    'a\x00b.wav,joy,train\n'            # line 4: a NUL byte (was: ValueError for the whole build)
                    'c.wav,"joy,train\n'                # line 5: a stray quote swallows nothing after it
                    'd.wav,joy,train\n'
                    '\n'
                    'e.wav,joy,dev\n', encoding="utf-8")
    rows, invalid = read_media_list(path, ["train", "dev"])
    got = [(r["csv_line"], r["status"], r["reason"]) for s in ("train", "dev") for r in rows[s]]
    assert got == [(2, "ok", ""), (4, "rejected", "bad_row"), (6, "ok", ""), (8, "ok", "")]
    assert rows["train"][0]["source"] == str(tmp_path / "two\nlines.wav")
    assert "NUL" in rows["train"][1]["detail"] and rows["train"][1]["source"] == ""
    assert [(r["csv_line"], r["reason"]) for r in invalid] == [(5, "bad_row")]


@pytest.mark.unit
def test_make_list_never_follows_a_link_out_of_root(tmp_path, capsys):
    root, outside = tmp_path / "faces", tmp_path / "elsewhere"
    for name in ("train/happy/a.png", "train/sad/b.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"png")
    (outside / "secret").mkdir(parents=True)
    (outside / "shadow.png").write_bytes(b"not yours")
    (outside / "secret" / "c.png").write_bytes(b"not yours either")
    (root / "train" / "happy" / "shadow.png").symlink_to(outside / "shadow.png")   # as /etc/shadow would be
    (root / "train" / "angry").symlink_to(outside / "secret", target_is_directory=True)
    (root / "train" / "sad" / "again.png").symlink_to(root / "train" / "happy" / "a.png")   # inside ROOT: fine
    result = lists.image_folders(root)
    listed = sorted(Path(r["path"]).name for r in result.rows)
    assert listed == ["a.png", "a.png", "b.png"]
    assert all(Path(r["path"]).is_relative_to(root.resolve()) for r in result.rows)
    # the file link is counted as not listed; the folder link is never walked (pathlib's rglob)
    assert sum(n for why, n in result.skipped.items() if "out of ROOT" in why) == 1, result.skipped
    code = command("make-list")(["image-folders", str(root)])
    out, err = capsys.readouterr()
    assert code == 0 and "elsewhere" not in out and "out of ROOT" in err


@pytest.fixture(scope="module")
def hostile_list(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=220:duration=1.2", "-ar", "16000", "file:" + str(folder / "tone.wav"))
    (folder / "two\nlines.wav").write_bytes((folder / "tone.wav").read_bytes())
    clip(folder / "clip.mp4", seconds=2.0, size="96x64")
    png_bomb(folder / "bomb.png")
    return write_rows(folder / "list.csv", [
        ["tone.wav", "joy", "train", "huge_end", "", "0", "1e308"],      # OverflowError in the size estimate
        ["tone.wav", "joy", "train", "past_end", "", "0.5", "1000000"],  # was decode_error: clamped to the file
        ["clip.mp4", "joy", "train", "sub_ms", "", "0.0001", "0.0004"],  # was ok with the whole clip's frames
        ["clip.mp4", "joy", "train", "fifty_ms", "", "1.0", "1.05"],     # was decode_error
        ["two\nlines.wav", "sadness", "dev", "newline", "", "", ""],     # was two bad rows
        ["a\x00b.wav", "joy", "dev", "nul", "", "", ""],                 # was a ValueError for the whole build
        ["bomb.png", "joy", "dev", "bomb", "", "", ""],                  # was ~830 MB of ffmpeg
    ])


def test_a_hostile_list_builds_with_one_reason_per_row(tmp_path, hostile_list):
    out = tmp_path / "out"
    assert command("build-shards")(["--list", str(hostile_list), "--out", str(out),
                                    f"scheduler={session_scheduler()}"]) == 0
    rows = {r["key"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert Counter(r["csv_line"] for r in rows.values()) == Counter({2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 8: 1, 9: 1})
    got = {k: (r["status"], r["reason"]) for k, r in rows.items()}
    assert got == {"huge_end": ("ok", ""), "past_end": ("ok", ""), "sub_ms": ("rejected", "too_short"),
                   "fifty_ms": ("rejected", "too_short"), "newline": ("ok", ""), "nul": ("rejected", "bad_row"),
                   "bomb": ("rejected", "too_large")}, {k: r["detail"] for k, r in rows.items()}
    assert rows["huge_end"]["duration_s"] == pytest.approx(1.2, abs=0.01)
    assert rows["past_end"]["duration_s"] == pytest.approx(0.7, abs=0.01)
    assert "16000x16000" in rows["bomb"]["detail"] and "probe.max_pixels" in rows["bomb"]["detail"]
