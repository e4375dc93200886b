"""Read back what W&B wrote in offline mode: the run-ID.wandb files (a LevelDB-style log of protobuf
records: 7-byte header ':W&B' + magic + version, then 32 KiB blocks of [crc32 u32, length u16, type u8,
data] chunks; type 1 = a whole record, 2/3/4 = first/middle/last piece)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B", f"{path} is not a W&B run file"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:                       # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(wandb_dir: Path, run_id: str) -> dict:
    """{project, config, history_keys, summary} over every offline session of one run id (a resumed run
    and `evaluate log_to_run=true` each add one)."""
    out: dict = {"project": None, "config": {}, "history_keys": set(), "summary": {}}
    for path in sorted(Path(wandb_dir).glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")):
        for r in records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                out["project"] = out["project"] or r.run.project
                out["config"].update({_key(i): json.loads(i.value_json) for i in r.run.config.update})
            elif kind == "config":
                out["config"].update({_key(i): json.loads(i.value_json) for i in r.config.update})
            elif kind == "history":
                out["history_keys"] |= {_key(i) for i in r.history.item}
            elif kind == "summary":
                out["summary"].update({_key(i): json.loads(i.value_json) for i in r.summary.update})
    out["config"] = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in out["config"].items()}
    return out
