"""TF Hub export: one reusable SavedModel per projection-head layer.

Hand-written: tensorflow_hub loads reusable SavedModels (hub.KerasLayer) but
has no exporter for them. Each module follows the reusable SavedModel
conventions (https://www.tensorflow.org/hub/reusable_saved_models):

  module(images, training=False) -> dict   # traced for training=True/False
  module.variables, module.trainable_variables, module.regularization_losses
  signatures['serving_default'](images=...) -> dict   # TF Serving, Keras 3

The dict has every named endpoint of the model plus `default`, the output of
the module's projection-head layer: head_0 is the backbone output
(`proj_head_input`), head_k the output of head layer k. The trainable
variables of head_k are the ones its default output depends on (backbone and
head layers 1..k), which is what fine-tuning from layer k trains.

Exports are written atomically: `<export_dir>/<step>/head_<k>` appears
complete or not at all, and an interrupted export leaves earlier ones intact.
A SIGTERM (preemption) while the new export is written removes the partial
copy and raises ExportInterrupted; one that arrives while the finished copy is
moved into place (on a bucket, a rename copies every file) is held until the
move is done, then raised.
"""
import dataclasses
import datetime
import json
import logging
import os
import re
import tempfile
import uuid
from typing import Dict, List, Optional, Union

import tensorflow as tf

from simclr_tf2.backbones import ENDPOINTS
from simclr_tf2.configs.schema import ExperimentConfig, ModelConfig, check
from simclr_tf2.errors import (ExportError, ExportInterrupted,  # noqa: F401 (re-exported)
                               RunError)
from simclr_tf2.export.official import is_savedmodel_dir
from simclr_tf2.models import SimCLRModel
from simclr_tf2.models.precision import precision_policy
from simclr_tf2.rundir import restore_model
from simclr_tf2.signals import sigterm_guard

log = logging.getLogger("simclr_tf2.export")

METADATA_FILE = "simclr_export.json"
EXPORT_FORMAT = "simclr_tf2.hub_module.v1"
INPUT_CONVENTION = ("float32 RGB images [batch, height, width, 3] with values in "
                    "[0, 1]; no mean/std normalisation")
_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"


# ------------------------------------------------------------------ modules
def output_names(model: SimCLRModel) -> List[str]:
    """Keys of a module's output dict, `default` first."""
    names = ["default"] + list(ENDPOINTS) + ["proj_head_input"]
    names += [f"proj_head_layer{k}" for k in range(1, head_layers_built(model) + 1)]
    names += ["proj_head_output"]
    if model.supervised_head is not None:
        names.append("logits_sup")
    return names


def head_layers_built(model: SimCLRModel) -> int:
    return len(model.projection_head.dense_layers)


def _default_key(head_index: int) -> str:
    return "proj_head_input" if head_index == 0 else f"proj_head_layer{head_index}"


def _dependencies(model: SimCLRModel, head_index: int) -> List[tf.Variable]:
    """Trainable-kind variables the output of head layer `head_index` depends on."""
    layers = [model.backbone]
    layers += model.projection_head.dense_layers[:head_index]
    layers += model.projection_head.bn_layers[:head_index]
    found = []
    for layer in layers:
        for variable in layer.weights:
            if not re.search(r"moving_(mean|variance)", variable.name):
                found.append(variable)
    return found


def traced_model(model: SimCLRModel):
    """model(images, training=...) as one tf.function that the modules of
    every head call: the network is traced once per `training` value for all
    of them (each module's own functions are thin wrappers picking its
    outputs), not once per head and call convention (a 4-head export traced
    it 20 times)."""
    @tf.function
    def outputs(images, training):
        return model(images, training=training)
    return outputs


def build_hub_module(model: SimCLRModel, head_index: int, weight_decay: float = 0.0,
                     official_call_convention: bool = False, model_outputs=None):
    """A saveable object for head `head_index` of a float32 `model`.

    Returns (module, serving_function). `weight_decay` > 0 adds one
    regularization loss, weight_decay * sum(||W||^2 / 2) over the conv and
    dense kernels it trains (what the model was trained with).
    `model_outputs`: traced_model(model), shared by the modules of one export.
    """
    built = head_layers_built(model)
    check(0 <= head_index <= built, f"head_index must be in [0, {built}]. "
          f"Received: head_index={head_index}")
    names = output_names(model)
    default_key = _default_key(head_index)
    model_outputs = model_outputs or traced_model(model)

    def forward(images, training):
        outputs = model_outputs(images, training)
        result = {"default": outputs[default_key]}
        result.update({name: outputs[name] for name in names[1:]})
        return result

    @tf.function
    def call(images, training=False, trainable=None):
        # `trainable` is the authors' name for `training` (official convention).
        if trainable is not None:
            training = trainable
        return forward(images, training)

    spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
    call.get_concrete_function(spec, training=False)
    call.get_concrete_function(spec, training=True)
    if official_call_convention:
        call.get_concrete_function(spec, trainable=False)
        call.get_concrete_function(spec, trainable=True)

    @tf.function(input_signature=[spec])
    def serve(images):
        return forward(images, False)

    trainable = _dependencies(model, head_index)
    kernels = [v for v in trainable if re.search(r"/kernel:\d+$", v.name)]
    regularization_losses = []
    if weight_decay > 0 and kernels:
        @tf.function(input_signature=[])
        def weight_decay_loss():
            return weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in kernels])
        regularization_losses.append(weight_decay_loss)

    module = tf.__internal__.tracking.AutoTrackable()
    module.__call__ = call
    module.variables = list(model.weights)
    module.trainable_variables = trainable
    module.regularization_losses = regularization_losses
    return module, serve


# ------------------------------------------------------------------- export
def _float32_copy(model: SimCLRModel, image_size: int) -> SimCLRModel:
    """A float32, fully trainable copy of `model` (same mode and heads).

    Weights travel through a checkpoint, so the copy does not depend on which
    layers were frozen, on the precision policy or on the strategy.
    """
    config = _export_model_config(model.config)
    with precision_policy("float32"):
        copy = SimCLRModel(config, mode=model.mode)
        copy(tf.zeros([1, image_size, image_size, 3]), training=False)
    tmp = os.path.join(tempfile.gettempdir(), f"weights-{uuid.uuid4().hex}")
    try:
        path = tf.train.Checkpoint(model=model).write(tmp)
        tf.train.Checkpoint(model=copy).read(path).assert_existing_objects_matched()
    finally:
        for name in tf.io.gfile.glob(tmp + "*"):
            tf.io.gfile.remove(name)
    return copy


def _export_model_config(config: ModelConfig) -> ModelConfig:
    """Everything trainable; plain (per-replica) batch norm: a module runs on
    the caller's devices, and synchronized BN's custom gradient cannot be
    saved (loading warned once per BN layer). Same variables either way."""
    return dataclasses.replace(config, fine_tune_after_block=-1, sync_bn=False)


def _module_readme(name: str, metadata: Dict) -> str:
    size = metadata.get("image_size")
    size_text = f"{size}x{size}" if size else "the training size"
    official = ("\nThe authors' convention works too: `module(images, trainable=False)`.\n"
                if metadata["official_call_convention"] else "")
    return f"""# SimCLRv2 hub module `{name}` (simclr_tf2)

Default output: `{metadata['default_output']}` ({metadata['default_dim']} features),
the output of projection-head layer {metadata['head']} (0 = backbone output).
Input: {INPUT_CONVENTION}; trained at {size_text}.
Outputs: a dict with `default` and {', '.join(metadata['outputs'][1:])}.

```python
import tensorflow_hub as hub, tf_keras
features = hub.KerasLayer("{name}", trainable=True, output_key="default")
model = tf_keras.Sequential([features, tf_keras.layers.Dense(num_classes)])
```
or `simclr_tf2.load_hub_module(path, trainable=True)`. `tf.saved_model.load(path)`
gives `module(images, training=False)`; Keras 3 and TF Serving use the
`serving_default` signature (`keras.layers.TFSMLayer(path)`).{official}
Details (config, step, trainable variables) are in `{METADATA_FILE}`.
"""


def _clean_leftovers(export_dir: str) -> None:
    """Removes what interrupted exports left; restores a replaced export whose
    replacement never landed."""
    for name in tf.io.gfile.listdir(export_dir):
        name = name.rstrip("/")
        path = os.path.join(export_dir, name)
        if name.startswith(_OLD_PREFIX):
            step = name[len(_OLD_PREFIX):].split("-")[0]
            final = os.path.join(export_dir, step)
            if not tf.io.gfile.exists(final):
                tf.io.gfile.rename(path, final)
                log.warning("restored export %s that an interrupted re-export had "
                            "moved aside", final)
                continue
            tf.io.gfile.rmtree(path)
        elif name.startswith(_TMP_PREFIX):
            log.warning("removing the partial export %s left by an interrupted run", path)
            tf.io.gfile.rmtree(path)


def exported_steps(export_dir: str) -> List[int]:
    """Steps with a complete export in `export_dir`, oldest first."""
    if not tf.io.gfile.isdir(export_dir):
        return []
    return sorted(int(n.rstrip("/")) for n in tf.io.gfile.listdir(export_dir)
                  if n.rstrip("/").isdigit())


def export_hub_modules(model_or_dir: Union[SimCLRModel, str],
                       export_dir: Optional[str] = None, *,
                       config: Optional[ExperimentConfig] = None,
                       checkpoint: Optional[str] = None,
                       step: Optional[int] = None,
                       keep_hub_module_max: Optional[int] = None,
                       official_call_convention: Optional[bool] = None,
                       train_mode: Optional[str] = None) -> str:
    """Writes `<export_dir>/<step>/head_0 .. head_N` and returns that directory.

    model_or_dir: a live SimCLRModel (then pass `config`, its experiment, for
      the image size, weight decay and metadata) or a model_dir written by a
      training run (config.json and checkpoints; `checkpoint` picks one, else
      the latest).
    export_dir: for a model_dir, relative to it (default config.export.export_dir,
      'hub'); required for a live model.
    train_mode: the training mode that made a live model (recorded in the
      metadata; read from the run for a model_dir).
    keep_hub_module_max / official_call_convention: default from
      config.export. Older exports beyond keep_hub_module_max are deleted (0
      keeps all).
    """
    if isinstance(model_or_dir, str):
        model, config, step, export_dir, train_mode = _from_model_dir(
            model_or_dir, export_dir, config, checkpoint, step)
    else:
        model = model_or_dir
        check(export_dir is not None, "export_dir must be given when exporting a "
              "live model")
        check(isinstance(model, SimCLRModel), "export_hub_modules takes a "
              f"SimCLRModel or a model_dir. Received: {type(model).__name__}")
        config = config or ExperimentConfig(model=model.config)
        step = int(step or 0)
    keep = config.export.keep_hub_module_max if keep_hub_module_max is None \
        else keep_hub_module_max
    official = (config.export.official_call_convention
                if official_call_convention is None else official_call_convention)
    image_size = config.data.image_size
    copy = _float32_copy(model, image_size)
    tf.io.gfile.makedirs(export_dir)
    _clean_leftovers(export_dir)
    final = os.path.join(export_dir, str(step))
    tmp = os.path.join(export_dir, f"{_TMP_PREFIX}{step}-{uuid.uuid4().hex[:8]}")
    state = {"published": False}

    def interrupted():
        if state["published"]:
            return ExportInterrupted(f"SIGTERM arrived while the export was moved into "
                                     f"place; {final} is complete and the command stops here")
        return ExportInterrupted(
            f"export to {export_dir!r} interrupted by SIGTERM: its previous exports are "
            "intact and the partial copy is removed; rerun the same command to export")
    try:
        with sigterm_guard(interrupted) as guard:
            _write_modules(copy, config, tmp, step, official, train_mode)
            guard.hold()
            _publish(tmp, final, export_dir, step)
            state["published"] = True
            if keep > 0:
                for old in exported_steps(export_dir)[:-keep]:
                    tf.io.gfile.rmtree(os.path.join(export_dir, str(old)))
    except ExportInterrupted:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    log.info("exported %d hub modules to %s", head_layers_built(copy) + 1, final)
    return final


def _write_modules(copy: SimCLRModel, config: ExperimentConfig, tmp: str, step: int,
                   official: bool, train_mode: Optional[str]) -> None:
    """head_0 .. head_N of `copy` with their metadata and README, in `tmp`."""
    image_size = config.data.image_size
    weight_decay = config.train.weight_decay
    names = output_names(copy)
    probe = copy(tf.zeros([1, image_size, image_size, 3]), training=False)
    model_outputs = traced_model(copy)
    for head in range(head_layers_built(copy) + 1):
        name = f"head_{head}"
        module, serve = build_hub_module(copy, head, weight_decay, official, model_outputs)
        path = os.path.join(tmp, name)
        tf.saved_model.save(module, path, signatures={"serving_default": serve})
        metadata = {
            "format": EXPORT_FORMAT, "head": head,
            "default_output": _default_key(head),
            "default_dim": int(probe[_default_key(head)].shape[-1]),
            "outputs": names, "image_size": image_size, "input": INPUT_CONVENTION,
            "call": "module(images, training=False) -> dict",
            "official_call_convention": official, "step": step,
            "num_trainable_variables": len(module.trainable_variables),
            "num_variables": len(module.variables),
            "regularization": (f"weight_decay * sum(l2_loss(kernel)), weight_decay="
                               f"{weight_decay}" if module.regularization_losses else None),
            "model_mode": copy.mode, "train_mode": train_mode,
            "experiment": config.to_dict(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        with tf.io.gfile.GFile(os.path.join(path, METADATA_FILE), "w") as f:
            json.dump(metadata, f, indent=2)
        with tf.io.gfile.GFile(os.path.join(path, "README.md"), "w") as f:
            f.write(_module_readme(name, metadata))


def _publish(tmp: str, final: str, export_dir: str, step: int) -> None:
    """Moves the finished export into place; replaces one of the same step."""
    if not tf.io.gfile.exists(final):
        tf.io.gfile.rename(tmp, final)
        return
    aside = os.path.join(export_dir, f"{_OLD_PREFIX}{step}-{uuid.uuid4().hex[:8]}")
    tf.io.gfile.rename(final, aside)
    tf.io.gfile.rename(tmp, final)
    tf.io.gfile.rmtree(aside)


def _from_model_dir(model_dir, export_dir, config, checkpoint, step):
    try:
        restored = restore_model(checkpoint or model_dir, "pretrain", config=config)
    except RunError as error:
        raise ExportError(f"nothing to export: {error}") from None
    # Relative export dirs live inside the model dir (absolute ones stay).
    export_dir = os.path.join(model_dir, export_dir or restored.config.export.export_dir)
    step = restored.step if step is None else step
    return restored.model, restored.config, int(step), export_dir, restored.mode


# --------------------------------------------------------------------- load
def load_hub_module(path: str, trainable: bool = False,
                    output_key: Optional[str] = "default", **kwargs):
    """hub.KerasLayer for a module exported here (tf_keras).

    trainable=True fine-tunes it (batch norm runs in training mode when the
    surrounding model trains). output_key=None returns the whole dict.
    """
    import tensorflow_hub as hub
    if not is_savedmodel_dir(path):
        raise ExportError(f"{path!r} is not a SavedModel directory (no saved_model.pb)")
    return hub.KerasLayer(path, trainable=trainable, output_key=output_key, **kwargs)


def read_export_metadata(path: str) -> Dict:
    """The simclr_export.json of a hub module."""
    meta = os.path.join(path, METADATA_FILE)
    if not tf.io.gfile.exists(meta):
        raise ExportError(f"{meta} not found: not a simclr_tf2 hub module")
    with tf.io.gfile.GFile(meta) as f:
        return json.load(f)
