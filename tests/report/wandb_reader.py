"""Reading an offline W&B run in tests: its config, summary, history and exit code.

`read_offline_run` parses W&B's binary record log (`wandb/offline-run-*/run-*.wandb`); `offline_run`
waits for the run's exit record and collects what the tests check."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any


def read_offline_run(run_file: str | Path) -> list[Any]:
    """The records of an offline W&B run file (`wandb/offline-run-*/run-*.wandb`) as protobuf `Record`s.

    The file is W&B's record log: a 7-byte header, then LevelDB-log blocks of 32 KiB whose chunks
    (7-byte header: crc, length, type FULL/FIRST/MIDDLE/LAST) carry serialized records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(run_file).read_bytes()
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def offline_run(run_dir: str | Path, timeout_s: float = 30.0) -> dict[str, Any]:
    """{"config", "summary", "exit_code", "history"} of the one offline W&B run under `run_dir`/wandb,
    waiting (up to `timeout_s`) for its exit record: W&B's service may still be writing the file
    when `finish` returns. The config comes from the run record and every config update."""
    (run_file,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_offline_run(run_file)
        exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
        if exits or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    def items(updates) -> dict[str, Any]:
        return {(u.key or "/".join(u.nested_key)): json.loads(u.value_json) for u in updates}

    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            config |= items(r.run.config.update)
        elif kind == "config":
            config |= items(r.config.update)
        elif kind == "summary":
            summary |= items(r.summary.update)
        elif kind == "history":
            history.append(items(r.history.item))
    return {"config": config, "summary": summary, "exit_code": exits[0] if exits else None, "history": history}
