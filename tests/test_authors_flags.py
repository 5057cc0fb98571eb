"""The authors' (google-research/simclr) command lines: their flag names,
their modes, the TF1 leftovers, --dry_run, and conflicting spellings."""
import json
import os
import shlex

import pytest
from absl import flags

from simclr_tf2 import authors_flags
from simclr_tf2.flag_definitions import CONFIG_FLAGS, define_flags, resolve_flags
from simclr_tf2.train import run_command
from simclr_tf2.training.learner import ScheduleSteps
from simclr_tf2.training.fit import checkpoint_interval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Their README commands, verbatim (tf2/README.md: the two pretraining runs;
# the top-level README: linear-head fine-tuning on CIFAR-10 and fine-tuning
# the whole network on ImageNet's 1% subset, which tf2/README.md points to).
CIFAR_PRETRAIN = r"""
python run.py --train_mode=pretrain \
  --train_batch_size=512 --train_epochs=1000 \
  --learning_rate=1.0 --weight_decay=1e-4 --temperature=0.5 \
  --dataset=cifar10 --image_size=32 --eval_split=test --resnet_depth=18 \
  --use_blur=False --color_jitter_strength=0.5 \
  --model_dir=/tmp/simclr_test --use_tpu=False
"""
IMAGENET_PRETRAIN_TPU = r"""
python run.py --train_mode=pretrain \
  --train_batch_size=4096 --train_epochs=100 --temperature=0.1 \
  --learning_rate=0.075 --learning_rate_scaling=sqrt --weight_decay=1e-4 \
  --dataset=imagenet2012 --image_size=224 --eval_split=validation \
  --data_dir=$DATA_DIR --model_dir=$MODEL_DIR \
  --use_tpu=True --tpu_name=$TPU_NAME --train_summary_steps=0
"""
CIFAR_FINETUNE = r"""
python run.py --mode=train_then_eval --train_mode=finetune \
  --fine_tune_after_block=4 --zero_init_logits_layer=True \
  --variable_schema='(?!global_step|(?:.*/|^)Momentum|head)' \
  --global_bn=False --optimizer=momentum --learning_rate=0.1 --weight_decay=0.0 \
  --train_epochs=100 --train_batch_size=512 --warmup_epochs=0 \
  --dataset=cifar10 --image_size=32 --eval_split=test --resnet_depth=18 \
  --checkpoint=/tmp/simclr_test --model_dir=/tmp/simclr_test_ft --use_tpu=False
"""
IMAGENET_1PCT_FINETUNE_TPU = r"""
python run.py --mode=train_then_eval --train_mode=finetune \
  --fine_tune_after_block=-1 --zero_init_logits_layer=True \
  --variable_schema='(?!global_step|(?:.*/|^)Momentum|head_supervised)' \
  --global_bn=True --optimizer=lars --learning_rate=0.005 \
  --learning_rate_scaling=sqrt --weight_decay=0 \
  --train_epochs=60 --train_batch_size=1024 --warmup_epochs=0 \
  --dataset=imagenet2012_subset/1pct --image_size=224 --eval_split=validation \
  --data_dir=$DATA_DIR --model_dir=$MODEL_DIR --checkpoint=$CHKPT_DIR \
  --use_tpu=True --tpu_name=$TPU_NAME --train_summary_steps=0 \
  --num_proj_layers=3 --ft_proj_selector=1
"""
# The shell variables their README sets before these commands.
SHELL = {"TPU_NAME": "my-tpu", "DATA_DIR": "gs://bucket/tfds", "MODEL_DIR": "gs://bucket/run",
         "CHKPT_DIR": "gs://bucket/pretrained"}


def _argv(command, **replace):
    """The command's flags as the shell passes them to run.py."""
    for name, value in SHELL.items():
        command = command.replace(f"${name}", value)
    argv = shlex.split(command.replace("\\\n", " "))[2:]
    for name, value in replace.items():
        argv = [f"--{name}={value}" if a.startswith(f"--{name}=") else a for a in argv]
    return argv


def _values(argv):
    values = flags.FlagValues()
    define_flags(values)
    values(["train", *argv])
    return values


def _resolve(argv):
    return resolve_flags(_values(argv), argv)


def _setting(resolution, key):
    section, name = key.split(".")
    holder = resolution.run_config if section == "run" else getattr(resolution.config,
                                                                    section)
    return getattr(holder, name)


# Per README command: our spelling of it, and what each of their flags
# means here, field by field (their flag -> {our setting: value}).
EQUIVALENTS = {
    "cifar_pretrain": (CIFAR_PRETRAIN, [
        "--preset=authors", "--mode=pretrain", "--train_batch_size=512",
        "--train_epochs=1000", "--learning_rate=1.0", "--weight_decay=1e-4",
        "--temperature=0.5", "--dataset=cifar10", "--image_size=32", "--cifar_stem",
        "--num_classes=10", "--eval_split=test", "--depth=18", "--nouse_blur",
        "--color_jitter_strength=0.5", "--model_dir=/tmp/simclr_test", "--strategy=auto"], {
        "--train_mode=pretrain": {"run.mode": "pretrain"},  # their default --mode=train
        "--resnet_depth=18": {"model.depth": 18},
        "--image_size=32": {"data.image_size": 32, "model.cifar_stem": True},
        "--dataset=cifar10": {"data.dataset": "cifar10", "model.num_classes": 10},
        "--use_tpu=False": {"run.strategy": "auto", "run.tpu": None},
        "(their defaults)": {"train.learning_rate_scaling": "linear",
                             "train.optimizer": "lars", "model.sync_bn": True,
                             "model.width_multiplier": 1, "model.proj_out_dim": 128,
                             "model.num_proj_layers": 3, "train.warmup_epochs": 10,
                             "model.bn_momentum": 0.9, "train.precision": "float32",
                             "train.checkpoint_epochs": 1, "memory.queue_size": 0},
    }),
    "imagenet_pretrain_tpu": (IMAGENET_PRETRAIN_TPU, [
        "--preset=authors", "--mode=pretrain", "--train_batch_size=4096",
        "--train_epochs=100", "--temperature=0.1", "--learning_rate=0.075",
        "--learning_rate_scaling=sqrt", "--weight_decay=1e-4", "--dataset=imagenet2012",
        "--image_size=224", "--eval_split=validation", "--data_dir=gs://bucket/tfds",
        "--model_dir=gs://bucket/run", "--strategy=tpu", "--tpu=my-tpu"], {
        "--use_tpu=True": {"run.strategy": "tpu"},
        "--tpu_name=$TPU_NAME": {"run.tpu": "my-tpu"},
        "--image_size=224": {"model.cifar_stem": False},
        "--dataset=imagenet2012": {"model.num_classes": 1000},
        "--train_summary_steps=0": {"train.summary_interval": 100},  # ignored (notice)
    }),
    "cifar_finetune": (CIFAR_FINETUNE, [
        "--preset=authors", "--mode=train_then_eval", "--train_mode=finetune",
        "--fine_tune_after_block=4", "--zero_init_logits_layer", "--nosync_bn",
        "--optimizer=momentum", "--learning_rate=0.1", "--weight_decay=0.0",
        "--train_epochs=100", "--train_batch_size=512", "--warmup_epochs=0",
        "--dataset=cifar10", "--image_size=32", "--cifar_stem", "--num_classes=10",
        "--eval_split=test", "--depth=18", "--checkpoint=/tmp/simclr_test",
        "--model_dir=/tmp/simclr_test_ft"], {
        "--mode=train_then_eval": {"run.mode": "train_then_eval",
                                   "run.training_mode": "finetune"},
        "--global_bn=False": {"model.sync_bn": False},
        "--fine_tune_after_block=4": {"model.fine_tune_after_block": 4},
        "--variable_schema=...": {"model.ft_proj_selector": 0},  # ignored (notice)
    }),
    "imagenet_1pct_finetune_tpu": (IMAGENET_1PCT_FINETUNE_TPU, [
        "--preset=authors", "--mode=train_then_eval", "--train_mode=finetune",
        "--fine_tune_after_block=-1", "--zero_init_logits_layer", "--sync_bn",
        "--optimizer=lars", "--learning_rate=0.005", "--learning_rate_scaling=sqrt",
        "--weight_decay=0", "--train_epochs=60", "--train_batch_size=1024",
        "--warmup_epochs=0", "--dataset=imagenet2012_subset/1pct", "--image_size=224",
        "--eval_split=validation", "--data_dir=gs://bucket/tfds",
        "--model_dir=gs://bucket/run", "--checkpoint=gs://bucket/pretrained",
        "--strategy=tpu", "--tpu=my-tpu", "--num_proj_layers=3", "--ft_proj_selector=1"], {
        "--dataset=imagenet2012_subset/1pct": {"data.dataset": "imagenet2012_subset/1pct",
                                               "data.label_fraction": 1.0,
                                               "model.num_classes": 1000},
        "--ft_proj_selector=1": {"model.ft_proj_selector": 1},
        "--global_bn=True": {"model.sync_bn": True},
    }),
}


@pytest.mark.parametrize("name", EQUIVALENTS)
def test_readme_commands_resolve_to_our_spelling_of_them(name):
    command, ours, meanings = EQUIVALENTS[name]
    theirs = _resolve(_argv(command))
    mine = _resolve(ours)
    assert theirs.preset == "authors"  # their names, no --preset: their defaults
    assert theirs.config == mine.config
    assert theirs.run_config == mine.run_config
    for flag, settings in meanings.items():
        for key, value in settings.items():
            got = (theirs.run_config.training_mode if key == "run.training_mode"
                   else _setting(theirs, key))
            assert got == value, (flag, key)


def test_every_one_of_their_flags_is_a_flag_here_with_their_meaning():
    values = _values([])
    assert len(authors_flags.AUTHORS_FLAGS) == 48
    ours = {name for name, _ in CONFIG_FLAGS.values()}
    run_flags = {"mode", "train_mode", "checkpoint", "model_dir", "tpu_zone", "gcp_project"}
    for name in authors_flags.AUTHORS_FLAGS:
        assert name in values, name
        if name in authors_flags.ALIASES:
            target = authors_flags.ALIASES[name].target
            assert target is None or target in values, name
        else:
            assert name in ours | run_flags, name
    for name in authors_flags.TF1_LEFTOVERS:
        assert name in values


def test_helpfull_lists_the_aliases_under_one_heading_with_their_targets():
    values = _values([])
    text = values.module_help(authors_flags.HEADING)
    for name, alias in authors_flags.ALIASES.items():
        assert f"--{name}:" in text or f"--[no]{name}:" in text, name
        if alias.target:
            assert f"alias of --{alias.target}" in text
    assert "--variable_schema" in text and "--train_summary_steps" in text
    # and not among the library's own flags
    assert "resnet_depth" not in values.module_help("simclr_tf2.flag_definitions")


@pytest.mark.parametrize("argv,message", [
    (["--resnet_depth=18", "--depth=50"], "--resnet_depth=18 and --depth=50 disagree"),
    (["--global_bn=False", "--sync_bn"], "--global_bn=False and --sync_bn=True disagree"),
    (["--tpu_name=a", "--tpu=b"], "--tpu_name=a and --tpu=b disagree"),
    (["--use_tpu=True", "--strategy=mirrored"], "--use_tpu=True and --strategy=mirrored"),
    (["--use_tpu=False", "--strategy=tpu"], "--use_tpu=False and --strategy=tpu disagree"),
    (["--checkpoint_steps=5", "--checkpoint_interval=7"], "disagree"),
    (["--variable_schema=(", "--mode=finetune", "--checkpoint=/x"], "not a regular expr"),
])
def test_contradicting_spellings_fail_in_one_line_and_write_nothing(argv, message,
                                                                     tmp_path, capsys):
    model_dir = tmp_path / "run"
    assert run_command(_values([f"--model_dir={model_dir}", *argv]), argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("simclr_tf2.train: error:")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not model_dir.exists()


def test_agreeing_spellings_are_fine():
    resolution = _resolve(["--resnet_depth=18", "--depth=18", "--model_dir=x"])
    assert resolution.config.model.depth == 18


def test_a_flag_they_never_had_is_still_unknown():
    with pytest.raises(flags.UnrecognizedFlagError, match="loss_type"):
        _values(["--loss_type=chi"])


def test_precedences_of_their_code():
    # --tpu_name wins over --master; --master alone names the TPU.
    assert _resolve(["--master=grpc://1.2.3.4:8470", "--tpu_name=t",
                     "--model_dir=x"]).run_config.tpu == "t"
    assert _resolve(["--master=grpc://1.2.3.4:8470", "--use_tpu",
                     "--model_dir=x"]).run_config.tpu == "grpc://1.2.3.4:8470"
    # --checkpoint_steps overrides --checkpoint_epochs; 0 means "use epochs".
    train = _resolve(["--checkpoint_steps=7", "--model_dir=x"]).config.train
    assert (train.checkpoint_interval, train.checkpoint_epochs) == (7, 0)
    train = _resolve(["--checkpoint_steps=0", "--checkpoint_epochs=2",
                      "--model_dir=x"]).config.train
    assert train.checkpoint_epochs == 2
    train = _resolve(["--checkpoint_steps=7", "--checkpoint_epochs=2",
                      "--model_dir=x"]).config.train
    assert (train.checkpoint_interval, train.checkpoint_epochs) == (7, 0)
    # their defaults where the command says nothing: ImageNet, 224 px, 1000 classes
    model = _resolve(["--resnet_depth=101", "--model_dir=x"]).config.model
    assert (model.depth, model.cifar_stem, model.num_classes) == (101, False, 1000)
    # --mode=train trains --train_mode; without --mode, --train_mode is trained.
    for argv in (["--mode=train", "--train_mode=finetune"], ["--train_mode=finetune"]):
        run = _resolve([*argv, "--model_dir=x"]).run_config
        assert (run.mode, run.training_mode) == ("finetune", "finetune"), argv
    # Our own flags alone keep our default preset.
    assert _resolve(["--train_mode=finetune", "--model_dir=x"]).preset == "tiny"
    # an explicit --preset is kept, with their names too
    assert _resolve(["--preset=cifar_r18", "--resnet_depth=50",
                     "--model_dir=x"]).preset == "cifar_r18"


def test_checkpoint_epochs_become_steps_of_the_run():
    config = _resolve(["--preset=tiny", "--checkpoint_epochs=2", "--model_dir=x"]).config
    assert checkpoint_interval(config, ScheduleSteps(100, 0, 45)) == 90
    config = _resolve(["--preset=tiny", "--checkpoint_interval=30", "--model_dir=x"]).config
    assert checkpoint_interval(config, ScheduleSteps(100, 0, 45)) == 30


@pytest.mark.parametrize("pattern,selector,zero,agrees,says", [
    ("(?!global_step|(?:.*/|^)Momentum|head)", 0, True, True, ""),
    ("(?!global_step|(?:.*/|^)Momentum|head_supervised)", 1, True, True, ""),
    ("(?!global_step|(?:.*/|^)Momentum|head_supervised)", 0, True, False,
     "it restores the projection head"),
    (".*", 0, False, False, "it restores the step"),
    ("(?!global_step|(?:.*/|^)LARSOptimizer|head)", 0, False, False,
     "it skips the supervised head"),
])
def test_variable_schema_notice_says_whether_their_pattern_agrees(pattern, selector, zero,
                                                                  agrees, says):
    (notice,) = authors_flags.notices(
        _values([f"--variable_schema={pattern}"]), "finetune", selector, zero)
    assert notice.startswith("--variable_schema is a flag of the authors' TF1 code")
    assert notice.endswith("your pattern agrees") == agrees
    assert says in notice


def test_dry_run_prints_each_value_with_its_origin_and_touches_nothing(tmp_path, capsys):
    flagfile = tmp_path / "mine.cfg"
    flagfile.write_text("# a flagfile\n--temperature=0.2\n--nouse_blur\n")
    model_dir = tmp_path / "run"
    argv = _argv(CIFAR_PRETRAIN, model_dir=model_dir) + [f"--flagfile={flagfile}",
                                                         "--dry_run"]
    assert run_command(_values(argv), argv) == 0
    out = capsys.readouterr().out
    lines = {line.split("=")[0].strip(): line for line in out.splitlines()
             if " <- " in line}
    assert "<- --resnet_depth (command line; the authors' name for --depth)" in lines[
        "model.depth"]
    assert "= 0.2" in lines["train.temperature"]
    assert f"<- --temperature (flagfile {flagfile})" in lines["train.temperature"]
    assert "<- preset authors" in lines["train.learning_rate_scaling"]
    assert "derived from image_size=32" in lines["model.cifar_stem"]
    assert "notice: base config: preset 'authors'" in out
    assert not model_dir.exists()


def test_notices_are_printed_on_a_real_run_too(tmp_path, capsys, monkeypatch):
    import simclr_tf2.train as train_module
    monkeypatch.setattr(train_module, "run", lambda config, run_config: {"result": None})
    argv = ["--preset=tiny", f"--model_dir={tmp_path}", "--train_summary_steps=0"]
    assert run_command(_values(argv), argv) == 0
    assert "notice: --train_summary_steps is a flag of the authors' TF1 code" in (
        capsys.readouterr().out)


@pytest.mark.slow
def test_their_cifar_commands_train_and_fine_tune_end_to_end(tmp_path, capsys):
    """Their two CIFAR-10 commands, with the built-in digits instead of CIFAR-10
    (no download), a small batch and a few steps; through the command's parser
    and run (in process)."""
    pretrain_dir, finetune_dir = tmp_path / "pretrain", tmp_path / "finetune"
    few = ["--train_steps=3", "--train_batch_size=16", "--eval_batch_size=32",
           "--noexport_at_end"]
    for command, extra in ((CIFAR_PRETRAIN, []), (CIFAR_FINETUNE, ["--eval_steps=2"])):
        argv = _argv(command, dataset="digits", model_dir=pretrain_dir
                     if command is CIFAR_PRETRAIN else finetune_dir,
                     checkpoint=pretrain_dir) + few + extra
        argv = [a for a in argv if not a.startswith("--train_batch_size=512")]
        assert run_command(_values(argv), argv) == 0  # the command's own parse and run
    assert "--variable_schema is a flag of the authors' TF1 code" in capsys.readouterr().out
    pretrain = json.loads((pretrain_dir / "config.json").read_text())
    assert pretrain["experiment"]["model"]["depth"] == 18
    assert pretrain["experiment"]["model"]["cifar_stem"] is True
    result = json.loads((finetune_dir / "result.json").read_text())
    assert result["num_examples"] == 2 * 32  # --eval_steps=2 batches of 32
    assert result["train_mode"] == "finetune"
    # Three steps teach nothing to measure; the reported accuracy is checked
    # instead: the saved model's argmax on the same 64 eval images, in NumPy.
    from simclr_tf2.data import build_from_config, make_source
    from simclr_tf2.rundir import restore_model
    restored = restore_model(str(finetune_dir), "finetune")
    data = restored.config.data
    source = make_source(data, data.eval_split, labelled=True)
    correct = 0
    for batch in build_from_config(data, source, "eval", 32).take(2):
        logits = restored.model(batch["image"], training=False)["logits_sup"].numpy()
        correct += int((logits.argmax(-1) == batch["label"].numpy()).sum())
    assert result["top1"] == correct / 64


def test_the_readme_spelling_of_their_fine_tuning_is_the_same_run():
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("## Coming from google-research/simclr"):]
    block = section[section.index("python -m simclr_tf2.train --preset=authors"):]
    block = block[:block.index("```")]
    ours = shlex.split(block.replace("\\\n", " "))[3:]
    theirs = _resolve(_argv(CIFAR_FINETUNE))
    mine = _resolve(ours)
    assert (mine.config, mine.run_config) == (theirs.config, theirs.run_config)
