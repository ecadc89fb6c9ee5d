"""Training logs for TensorBoard and Weights & Biases (`train.report_to`, as in transformers).

Each logger receives every evaluation record (step, train loss, learning rate, metrics). Both
packages are optional: naming one that is not installed fails before training with the pip line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import ConfigError


class TensorBoardLogger:
    def __init__(self, log_dir: Path, run_name: str, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.report_to: tensorboard needs the tensorboard package (pip install tensorboard)") from None
        self.writer = SummaryWriter(log_dir=str(log_dir / "tensorboard"))

    def log(self, record: dict) -> None:
        step = record["step"]
        for key in ("train_loss", "lr"):
            if record.get(key) is not None:
                self.writer.add_scalar(f"train/{key.removeprefix('train_')}", record[key], step)
        for name, value in record["metrics"].items():
            self.writer.add_scalar(f"eval/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, log_dir: Path, run_name: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise ConfigError("train.report_to: wandb needs the wandb package (pip install wandb, then wandb login "
                              "or WANDB_MODE=offline)") from None
        log_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project="clue-run", name=run_name, config=config, dir=str(log_dir), reinit=True)

    def log(self, record: dict) -> None:
        values = {f"eval/{k}": v for k, v in record["metrics"].items()}
        if record.get("train_loss") is not None:
            values["train/loss"] = record["train_loss"]
        values["train/lr"] = record["lr"]
        self.run.log(values, step=record["step"])

    def close(self) -> None:
        self.run.finish()


LOGGERS = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}


def open_loggers(names, log_dir: Optional[Path], run_name: str, config: dict) -> list:
    if not names or log_dir is None:
        return []
    return [LOGGERS[name](Path(log_dir), run_name, config) for name in dict.fromkeys(names)]
