"""RunConfig: how and where one run runs (not part of the experiment).

Each field's help is its `setting(...)`; the command line's flags of the
same names are generated from them (flag_definitions.py).
"""
import dataclasses
from typing import Optional

from simclr_tf2.configs.fields import setting
from simclr_tf2.configs.modes import RUN_MODES, TRAIN_MODES
from simclr_tf2.configs.schema import check, check_choice
from simclr_tf2.tasks import Task, task_for, training_mode

STRATEGIES = ("auto", "tpu", "mirrored", "multi_worker_mirrored", "one_device")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How and where to run (not part of the experiment's definition)."""
    mode: str = setting("pretrain", "What to run: a training mode, eval (a trained run) "
                        "or train_then_eval (--train_mode, then eval).", choices=RUN_MODES)
    model_dir: str = setting("", "Run directory: checkpoints, summaries, config.json, "
                             "result.json.")
    train_mode: str = setting("pretrain", "What train_then_eval trains; what eval "
                              "expects when model_dir has no config.json.",
                              choices=TRAIN_MODES)
    checkpoint: Optional[str] = setting(None, "Fine-tune / linear-eval / eval from this "
                                        "checkpoint (prefix or directory; model weights "
                                        "only) or from an official SimCLRv2 TF2 "
                                        "SavedModel directory.")
    strategy: str = setting("auto", "tf.distribute strategy; auto = tpu if --tpu, "
                            "mirrored with >1 GPU, else one_device.", choices=STRATEGIES)
    tpu: Optional[str] = setting(None, "TPU name or grpc:// address.")
    tpu_zone: Optional[str] = setting(None, "TPU zone.")
    gcp_project: Optional[str] = setting(None, "GCP project of the TPU.")
    num_gpus: int = setting(-1, "GPUs to use (-1 = all).")
    num_cpu_devices: int = setting(1, "Split the CPU into this many logical devices "
                                   "(multi-replica runs on a CPU).")
    deterministic: bool = setting(False, "Op determinism and fixed seeds (reproducible, "
                                  "slower).")
    eval_split: Optional[str] = setting(None, "Evaluate this split instead of "
                                        "data.eval_split (library callers; the command "
                                        "line sets --eval_split).", flag="")
    teacher: Optional[str] = setting(None, "distill: the teacher, a fine-tuned run dir or "
                                     "checkpoint, a hub export (head_k) or an official "
                                     "SimCLRv2 SavedModel.")
    from_scratch: bool = setting(False, "finetune / linear_eval: start from random weights "
                                 "instead of --checkpoint (supervised baselines).")
    accept_changed_settings: bool = setting(False, "Resume the run in --model_dir although "
                                            "training settings changed since it started "
                                            "(without it such a rerun is refused, naming "
                                            "the changes); the changes are logged and "
                                            "recorded in config.json.")

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if "choices" in field.metadata:
                check_choice(field.name, getattr(self, field.name), field.metadata["choices"])
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
