"""RunConfig: how and where one run runs (not part of the experiment)."""
import dataclasses
from typing import Optional

from simclr_tf2.configs.modes import RUN_MODES, TRAIN_MODES
from simclr_tf2.configs.schema import check
from simclr_tf2.tasks import Task, task_for, training_mode

STRATEGIES = ("auto", "tpu", "mirrored", "multi_worker_mirrored", "one_device")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How and where to run (not part of the experiment's definition)."""
    mode: str = "pretrain"
    model_dir: str = ""
    # What train_then_eval trains, and what eval expects in model_dir.
    train_mode: str = "pretrain"
    # Initialise fine-tuning / linear eval from this checkpoint (file prefix or
    # directory): model weights only.
    checkpoint: Optional[str] = None
    strategy: str = "auto"
    tpu: Optional[str] = None
    tpu_zone: Optional[str] = None
    gcp_project: Optional[str] = None
    num_gpus: int = -1
    # Split the host CPU into this many logical devices (tests, demos).
    num_cpu_devices: int = 1
    deterministic: bool = False
    eval_split: Optional[str] = None
    # distill: the teacher (a run dir / checkpoint, a hub export, or an
    # official SimCLRv2 SavedModel).
    teacher: Optional[str] = None
    # finetune / linear_eval from random weights (supervised baselines)
    # instead of a pretrained checkpoint.
    from_scratch: bool = False
    # Resume a run in model_dir although training settings changed since
    # it started (the change is logged and recorded in config.json).
    accept_changed_settings: bool = False

    def __post_init__(self):
        check(self.mode in RUN_MODES, f"mode must be one of {list(RUN_MODES)}. "
              f"Received: mode={self.mode!r}")
        check(self.train_mode in TRAIN_MODES, f"train_mode must be one of "
              f"{list(TRAIN_MODES)}. Received: train_mode={self.train_mode!r}")
        check(self.strategy in STRATEGIES, f"strategy must be one of "
              f"{list(STRATEGIES)}. Received: strategy={self.strategy!r}")
        check(bool(self.model_dir), "model_dir must be set (where checkpoints, "
              "summaries and results go)")
        check(self.num_cpu_devices >= 1, "num_cpu_devices must be >= 1")

    @property
    def training_mode(self) -> Optional[str]:
        """What this run trains (None: it only evaluates)."""
        return training_mode(self.mode, self.train_mode)

    @property
    def task(self) -> Optional[Task]:
        """The task of what this run trains (None: it only evaluates)."""
        mode = self.training_mode
        return None if mode is None else task_for(mode)
