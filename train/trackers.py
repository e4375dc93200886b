"""Where a run's metrics go: `report_to=tensorboard,jsonl,wandb,mlflow` (TensorBoard + JSONL by default;
W&B and MLflow are the optional extras `avemo[wandb]`, `avemo[mlflow]`).

Metrics are grouped `train/...`, `dev/...` (the eval split's name), `test/...`; the hyper-parameters (the
flattened `train:` config) and the model size are logged once, when a run starts. RUN/metrics.jsonl keeps
the loop's flat records (`loss`, `train_loss`, `dev_weighted_f1`, ...), one JSON line each.
RUN/trackers.json remembers the W&B run id and the MLflow run id, so `--resume` continues the same tracker
run and `avemo evaluate ... log_to_run=true` attaches the test metrics to it.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Any

from avemo.core.atomic import atomic_write_bytes
from avemo.core.errors import ConfigError

log = logging.getLogger("avemo.trackers")

EXTRAS = {"wandb": "wandb", "mlflow": "mlflow"}    # tracker -> the module it needs (pip install 'avemo[NAME]')


def check_available(names: list[str]) -> None:
    """One line, before any work, for a tracker whose library is not installed."""
    for name in names:
        module = EXTRAS.get(name)
        if module and importlib.util.find_spec(module) is None:
            raise ConfigError(f"report_to={name} needs the {module} package: pip install 'avemo[{name}]'")


def grouped(record: dict, splits: tuple[str, ...]) -> dict:
    """The loop's flat record -> tracker names: `dev_weighted_f1` -> `dev/weighted_f1`, `loss` ->
    `train/loss`, `train_loss` -> `train/epoch_loss`; booleans (the `best` flag) are left out."""
    out = {}
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or key == "step":
            continue
        split, sep, rest = key.partition("_")
        if sep and split in splits and split != "train":
            out[f"{split}/{rest}"] = value
        elif key in ("train_loss", "train_acc"):
            out[f"train/epoch_{key.removeprefix('train_')}"] = value
        else:
            out[f"train/{key}"] = value
    return out


def _step(line: str) -> float:
    """A metrics.jsonl line's step; a line cut short by a kill counts as past every checkpoint."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return float("inf")


class JsonlTracker:
    def __init__(self, run: Path, ctx: dict):
        path = run / "metrics.jsonl"
        if ctx.get("resume_step") is not None and path.is_file():
            # a run killed mid-epoch logged steps past its checkpoint: those steps are trained again
            keep = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if _step(line) <= ctx["resume_step"]]
            atomic_write_bytes(path, "".join(f"{line}\n" for line in keep).encode("utf-8"))
        self.fh = open(path, "a", encoding="utf-8")

    def params(self, flat: dict, info: dict) -> None:
        self.fh.write(json.dumps({"step": 0, "time": round(time.time(), 3), **info}) + "\n")

    def log(self, step: int, record: dict, metrics: dict) -> None:
        self.fh.write(json.dumps({"step": step, "time": round(time.time(), 3), **record}) + "\n")
        self.fh.flush()

    def close(self, status: str = "FINISHED") -> None:
        self.fh.close()


class TensorBoardTracker:
    def __init__(self, run: Path, ctx: dict):
        from torch.utils.tensorboard import SummaryWriter
        resume_step = ctx.get("resume_step")
        # purge_step drops the events a killed run wrote past its checkpoint (TensorBoard's own mechanism)
        self.tb = SummaryWriter(str(run / "tb"), purge_step=None if resume_step is None else resume_step + 1)

    def params(self, flat: dict, info: dict) -> None:
        from torch.utils.tensorboard.summary import hparams
        values = {**flat, **info}
        writer = self.tb._get_file_writer()
        for part in hparams(values, {"dev/weighted_f1": 0.0}):   # the HPARAMS tab, in this run's own folder
            writer.add_summary(part)
        self.tb.add_text("config", "\n".join(f"    {k}: {v}" for k, v in values.items()))

    def log(self, step: int, record: dict, metrics: dict) -> None:
        for key, value in metrics.items():
            self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def close(self, status: str = "FINISHED") -> None:
        self.tb.close()


class WandbTracker:
    def __init__(self, run: Path, ctx: dict):
        import wandb
        state = ctx["state"].get("wandb", {})
        resumed = bool(state.get("id"))
        self.run = wandb.init(project=ctx["project"], name=ctx["name"], dir=str(run), id=state.get("id"),
                              resume="allow" if resumed else None, config=None if resumed else ctx.get("flat"),
                              settings=wandb.Settings(console="off", silent=True))
        if resumed and ctx.get("flat"):          # e.g. optim.epochs raised on --resume
            self.run.config.update(ctx["flat"], allow_val_change=True)
        ctx["state"]["wandb"] = {"id": self.run.id, "project": ctx["project"]}

    def params(self, flat: dict, info: dict) -> None:
        self.run.config.update(flat, allow_val_change=True)
        for key, value in info.items():
            self.run.summary[key] = value

    def log(self, step: int, record: dict, metrics: dict) -> None:
        self.run.log(metrics, step=step)
        for key, value in metrics.items():
            if key.startswith("test/"):
                self.run.summary[key] = value

    def close(self, status: str = "FINISHED") -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


class MlflowTracker:
    def __init__(self, run: Path, ctx: dict):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        state = ctx["state"].get("mlflow", {})
        uri = ctx["mlflow_uri"] or state.get("tracking_uri") or None
        try:
            self.client = MlflowClient(uri)
            if state.get("run_id"):
                self.run_id = state["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                exp = self.client.get_experiment_by_name(ctx["project"])
                exp_id = exp.experiment_id if exp else self.client.create_experiment(ctx["project"])
                self.run_id = self.client.create_run(exp_id, run_name=ctx["name"]).info.run_id
        except MlflowException as exc:
            raise ConfigError(f"report_to=mlflow: {str(exc).split('. ')[0]}") from None
        ctx["state"]["mlflow"] = {"run_id": self.run_id, "tracking_uri": self.client.tracking_uri}

    def params(self, flat: dict, info: dict) -> None:
        from mlflow.entities import Metric, Param
        params = [Param(k, str(v)) for k, v in {**flat, **info}.items()]
        for i in range(0, len(params), 100):           # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in info.items()])

    def log(self, step: int, record: dict, metrics: dict) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


TRACKERS = {"jsonl": JsonlTracker, "tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


class Trackers:
    """Every tracker of `report_to`, fanned out; `splits` names the metric groups (train, dev, test)."""

    def __init__(self, run: Path, names: list[str], splits: tuple[str, ...], project: str = "avemo",
                 name: str = "", mlflow_uri: str = "", resume_step: int | None = None, flat: dict | None = None):
        check_available(names)
        self.run, self.splits = run, splits
        state_path = run / "trackers.json"
        state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
        ctx = {"state": state, "project": project, "name": name or run.resolve().name, "mlflow_uri": mlflow_uri,
               "resume_step": resume_step, "flat": flat}
        self.trackers: list[Any] = []
        try:
            for n in names:
                self.trackers.append(TRACKERS[n](run, ctx))
        except BaseException:   # one that cannot open: those already open end FAILED, not RUNNING
            self.close("FAILED")
            raise
        if state:
            atomic_write_bytes(state_path, json.dumps(state, indent=1).encode("utf-8"))

    def params(self, flat: dict, info: dict) -> None:
        for t in self.trackers:
            t.params(flat, info)

    def log(self, step: int, **record) -> None:
        metrics = grouped(record, self.splits)
        for t in self.trackers:
            t.log(step, record, metrics)

    def close(self, status: str = "FINISHED") -> None:
        """End every tracker run: FINISHED, or FAILED / KILLED (MLflow's run states; W&B gets exit code 1)."""
        for t in self.trackers:
            try:
                t.close(status)
            except Exception as exc:   # one tracker's failure to close (a server gone) must not hide the others
                log.warning("report_to: closing %s failed: %s", type(t).__name__, exc)


def parse_report_to(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]
