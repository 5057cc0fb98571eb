"""The run modes, defined once.

A training mode trains one thing in a model_dir; `eval` evaluates a trained
run; `train_then_eval` trains `train_mode` and evaluates it.
"""
TRAIN_MODES = ("pretrain", "finetune", "linear_eval", "distill")
RUN_MODES = TRAIN_MODES + ("eval", "train_then_eval")
