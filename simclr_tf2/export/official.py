"""Import of the authors' released SimCLRv2 TF2 SavedModels.

Hand-written: the released SavedModels carry only variables named by Keras
auto-naming in the authors' code (`resnet/block_group1/bottleneck_block/
conv2d_fixed_padding_1/conv2d_1/kernel:0`, ...), and some have an empty
`trainable_variables_list`. Variables are therefore found by walking the whole
object graph and matched by structure: within the backbone, the projection
head and the supervised head, the k-th convolution / batch norm / dense layer
the authors created (Keras numbers them in creation order) is our k-th of the
same kind, and every pair must have the same shape. The spelling of a name
(`sync_batch_normalization` with global BN, say) does not matter.
"""
import collections
import dataclasses
import logging
import re
from typing import Dict, List, Optional, Tuple

import tensorflow as tf
import tf_keras

from simclr_tf2.backbones.resnet import RESNET_SPECS
from simclr_tf2.configs.schema import ModelConfig
from simclr_tf2.errors import OfficialImportError  # noqa: F401 (re-exported)
from simclr_tf2.models import SimCLRModel

log = logging.getLogger("simclr_tf2.export")

_LAYER_RE = re.compile(r"^(?:sync_)?(conv2d|batch_normalization|dense)(?:_(\d+))?$")


@dataclasses.dataclass
class ImportReport:
    """What `import_official_variables` copied and what it could not."""
    source: str
    copied: int = 0
    # Official variables with no counterpart in our model (e.g. projection
    # layers a fine-tuning model does not build), and the reverse.
    unmatched_official: List[str] = dataclasses.field(default_factory=list)
    unmatched_model: List[str] = dataclasses.field(default_factory=list)
    # Pairs left as initialised because their shapes differ (a supervised
    # head for another number of classes).
    skipped: List[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        parts = [f"copied {self.copied} variables from {self.source}"]
        for label, items in (("official variables unmatched", self.unmatched_official),
                             ("model variables unmatched", self.unmatched_model),
                             ("skipped (shape differs)", self.skipped)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {items[:3]})")
        return "; ".join(parts)


# -------------------------------------------------------------- official side
@dataclasses.dataclass
class _Layer:
    """One conv / BN / dense layer of the official model."""
    region: str  # backbone | projection_head | head_supervised
    kind: str    # conv2d | batch_normalization | dense
    index: int   # Keras auto-naming number: creation order within the kind
    path: str
    variables: Dict[str, tf.Variable]


def _region(name: str) -> str:
    if "head_supervised" in name:
        return "head_supervised"
    if "projection_head" in name:
        return "projection_head"
    return "backbone"


def _all_variables(root) -> List[tf.Variable]:
    seen, found = set(), []
    for obj in tf.train.TrackableView(root).descendants():
        if isinstance(obj, tf.Variable) and id(obj) not in seen:
            seen.add(id(obj))
            found.append(obj)
    return found


def official_layers(loaded) -> Dict[Tuple[str, str], List[_Layer]]:
    """{(region, kind): layers in creation order} of a loaded official model."""
    layers: Dict[str, _Layer] = {}
    unknown = []
    for variable in _all_variables(loaded):
        name = variable.name.split(":")[0]
        parts = name.split("/")
        match = _LAYER_RE.match(parts[-2]) if len(parts) >= 2 else None
        if match is None:
            unknown.append(variable.name)
            continue
        path = "/".join(parts[:-1])
        layer = layers.get(path)
        if layer is None:
            layer = layers[path] = _Layer(_region(name), match.group(1),
                                          int(match.group(2) or 0), path, {})
        layer.variables[parts[-1]] = variable
    if unknown:
        log.warning("official SavedModel: %d variables not in a conv/BN/dense layer "
                    "ignored, e.g. %s", len(unknown), unknown[:3])
    grouped = collections.defaultdict(list)
    for layer in layers.values():
        grouped[(layer.region, layer.kind)].append(layer)
    for items in grouped.values():
        items.sort(key=lambda layer: layer.index)
    return grouped


def infer_model_config(grouped) -> ModelConfig:
    """The ModelConfig of an official model, from its layers' shapes and the
    block names (`block_group<g>/<...>_block<_n>`)."""
    convs = grouped.get(("backbone", "conv2d"), [])
    if not convs:
        raise OfficialImportError("no backbone convolutions found: not a SimCLR "
                                  "SavedModel?")
    blocks = collections.defaultdict(set)
    for layer in convs:
        match = re.search(r"block_group(\d)/([a-z_]*block(?:_\d+)?)/", layer.path + "/")
        if match:
            blocks[int(match.group(1))].add(match.group(2))
    counts = tuple(len(blocks[g]) for g in (1, 2, 3, 4))
    depth = next((d for d, (kind, spec) in RESNET_SPECS.items() if spec == counts
                  and (kind == "bottleneck") == ("bottleneck" in convs[-1].path
                                                 or d >= 50)), None)
    if depth is None:
        raise OfficialImportError(f"cannot tell the ResNet depth from block counts "
                                  f"{counts}; pass config= explicitly")
    stem = [layer for layer in convs if "block_group" not in layer.path]
    first = stem[0].variables["kernel"].shape
    cifar_stem = len(stem) == 1 and first[0] == 3
    stem_out = int(stem[-1].variables["kernel"].shape[-1])
    width = stem_out / 64.0
    sk_ratio = 0.0
    sk_convs = [layer for layer in convs if "sk_" in layer.path]
    if len(stem) == 3 or sk_convs:
        # The attention's reduce conv of the last block: [1, 1, filters, mid].
        last_filters = int(512 * width)
        reduce = [layer for layer in sk_convs
                  if layer.variables["kernel"].shape[:3] == (1, 1, last_filters)]
        mid = int(reduce[-1].variables["kernel"].shape[-1]) if reduce else 32
        sk_ratio = mid / last_filters if mid > 32 else 0.0625
    dense = grouped.get(("projection_head", "dense"), [])
    sup = grouped.get(("head_supervised", "dense"), [])
    return ModelConfig(
        depth=depth, width_multiplier=width if width != int(width) else int(width),
        sk_ratio=sk_ratio, cifar_stem=cifar_stem, sync_bn=False,
        proj_head_mode="nonlinear" if len(dense) > 1 else ("linear" if dense else "none"),
        num_proj_layers=max(len(dense), 1),
        proj_out_dim=int(dense[-1].variables["kernel"].shape[-1]) if dense else 128,
        num_classes=int(sup[0].variables["kernel"].shape[-1]) if sup else 0)


# ------------------------------------------------------------------ our side
def _our_layers(model: SimCLRModel) -> Dict[Tuple[str, str], List[Dict[str, tf.Variable]]]:
    """Our conv / BN / dense layers grouped like official_layers, in creation
    order (Keras' own depth-first layer order, whatever is frozen)."""
    grouped = collections.defaultdict(list)
    regions = [(model.backbone, "backbone"), (model.projection_head, "projection_head")]
    if model.supervised_head is not None:
        regions.append((model.supervised_head, "head_supervised"))
    for root, region in regions:
        for layer in root._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, tf_keras.layers.BatchNormalization):
                leaves = {"gamma": layer.gamma, "beta": layer.beta,
                          "moving_mean": layer.moving_mean,
                          "moving_variance": layer.moving_variance}
                kind = "batch_normalization"
            elif isinstance(layer, tf_keras.layers.Conv2D):
                leaves, kind = {"kernel": layer.kernel, "bias": layer.bias}, "conv2d"
            elif isinstance(layer, tf_keras.layers.Dense):
                leaves, kind = {"kernel": layer.kernel, "bias": layer.bias}, "dense"
            else:
                continue
            grouped[(region, kind)].append({k: v for k, v in leaves.items()
                                            if v is not None})
    return grouped


# -------------------------------------------------------------------- import
def _load(path: str):
    if not tf.io.gfile.exists(tf.io.gfile.join(path, "saved_model.pb")):
        raise OfficialImportError(f"{path!r} is not a SavedModel directory (no "
                                  "saved_model.pb)")
    return tf.saved_model.load(path)


def is_savedmodel_dir(path: str) -> bool:
    return tf.io.gfile.exists(tf.io.gfile.join(path, "saved_model.pb"))


def import_official_variables(model: SimCLRModel, path_or_loaded,
                              strict_backbone: bool = True) -> ImportReport:
    """Copies an official SavedModel's variables into `model` (built).

    Backbone: every layer must match (else OfficialImportError, nothing
    written). Heads: pairs are copied where shapes agree; head layers only one
    side has, or a supervised head of another size, are reported.
    """
    source = path_or_loaded if isinstance(path_or_loaded, str) else "<loaded module>"
    loaded = _load(path_or_loaded) if isinstance(path_or_loaded, str) else path_or_loaded
    theirs = official_layers(loaded)
    ours = _our_layers(model)
    report = ImportReport(source=source)
    plan: List[Tuple[tf.Variable, tf.Variable]] = []
    problems = []
    for key in sorted(set(theirs) | set(ours)):
        region = key[0]
        official, mine = theirs.get(key, []), ours.get(key, [])
        if region == "backbone" and len(official) != len(mine):
            problems.append(f"{key[1]} layers in the backbone: official {len(official)}, "
                            f"ours {len(mine)}")
            continue
        for position in range(max(len(official), len(mine))):
            if position >= len(mine):
                report.unmatched_official += [v.name for v in
                                              official[position].variables.values()]
                continue
            if position >= len(official):
                report.unmatched_model += [v.name for v in mine[position].values()]
                continue
            layer, target = official[position], mine[position]
            if set(layer.variables) != set(target):
                problems.append(f"{layer.path}: official has {sorted(layer.variables)}, "
                                f"ours {sorted(target)}")
                continue
            for leaf, variable in target.items():
                theirs_v = layer.variables[leaf]
                if theirs_v.shape != variable.shape:
                    message = (f"{theirs_v.name} {theirs_v.shape.as_list()} -> "
                               f"{variable.name} {variable.shape.as_list()}")
                    if region == "backbone" and strict_backbone:
                        problems.append("shape differs: " + message)
                    else:
                        report.skipped.append(message)
                    continue
                plan.append((theirs_v, variable))
    if problems:
        raise OfficialImportError(
            f"the SavedModel at {source} does not fit this model "
            f"({len(problems)} problem(s)): " + "; ".join(problems[:5])
            + " -- is the depth / width / sk_ratio of the config right?")
    for theirs_v, variable in plan:
        variable.assign(tf.cast(theirs_v, variable.dtype))
    report.copied = len(plan)
    log.info("official import: %s", report.summary())
    return report


def load_official_savedmodel(path: str, config: Optional[ModelConfig] = None,
                             mode: str = "pretrain", image_size: int = 224
                             ) -> SimCLRModel:
    """A SimCLRModel with the weights of an official SimCLRv2 TF2 SavedModel.

    config: inferred from the SavedModel when None (depth, width, SK, head,
      classes). The returned model has `import_report` (an ImportReport).
    """
    loaded = _load(path)
    if config is None:
        config = infer_model_config(official_layers(loaded))
    model = SimCLRModel(config, mode=mode)
    model(tf.zeros([1, image_size, image_size, 3]), training=False)
    report = import_official_variables(model, loaded)
    report.source = path
    model.import_report = report
    return model
