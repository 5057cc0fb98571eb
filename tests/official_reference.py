"""A stand-in for the authors' released SimCLRv2 TF2 SavedModels, for tests.

Independent of simclr_tf2's layers: the variables are created with the exact
names and shapes the authors' tf2 code gives them (its Keras auto-naming is
emulated here and checked against the layouts in tests/data/*.json), and the
forward pass is transcribed from the authors' tf2/resnet.py and model.py with
raw tf.nn ops. The module is saved with the authors' call convention,
`module(images, trainable=<bool>) -> dict`.
"""
import collections
import json
import os
from typing import Dict, List

import numpy as np
import tensorflow as tf

REFERENCE_DIR = os.path.join(os.path.dirname(__file__), "data")  # the released models' layouts
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
EPSILON = 1e-5


def reference_json(name: str) -> Dict:
    with open(os.path.join(REFERENCE_DIR, f"official_savedmodel_{name}.json")) as f:
        return json.load(f)


class _Namer:
    """Keras auto-naming: the first `conv2d`, then `conv2d_1`, ... per base."""

    def __init__(self):
        self.counts = collections.Counter()

    def __call__(self, base: str) -> str:
        count = self.counts[base]
        self.counts[base] += 1
        return base if count == 0 else f"{base}_{count}"


class OfficialLikeModel:
    """Variables (name -> tf.Variable, creation order) and a forward pass."""

    def __init__(self, depth=50, width=1, sk=False, num_classes=10, proj_out_dim=128,
                 num_proj_layers=3, seed=0):
        self.rng = np.random.default_rng(seed)
        self.name = _Namer()
        self.sk = sk
        self.variables: Dict[str, tf.Variable] = {}
        self.trainable: List[tf.Variable] = []
        self.region_vars = collections.defaultdict(list)
        self.stem = []
        self.groups = []
        self.head = []
        self.sup = None
        self._build(depth, width, num_classes, proj_out_dim, num_proj_layers)

    # ------------------------------------------------------------- variables
    def _var(self, region, name, shape, kind):
        if kind == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = self.rng.normal(0, np.sqrt(1.0 / fan_in), shape)
        elif kind == "gamma":
            value = self.rng.uniform(0.5, 1.0, shape)
        elif kind == "moving_variance":
            value = self.rng.uniform(0.5, 1.5, shape)
        else:  # beta, moving_mean, bias
            value = self.rng.normal(0, 0.1, shape)
        variable = tf.Variable(value.astype(np.float32), name=name,
                               trainable=not kind.startswith("moving"))
        self.variables[name] = variable
        self.region_vars[region].append(variable)
        if variable.trainable:
            self.trainable.append(variable)
        return variable

    def _conv(self, region, scope, k, c_in, c_out, stride, fixed=True):
        if fixed:
            scope = f"{scope}/{self.name('conv2d_fixed_padding')}"
        prefix = f"{scope}/{self.name('conv2d')}"
        kernel = self._var(region, f"{prefix}/kernel", [k, k, c_in, c_out], "kernel")
        return {"kernel": kernel, "stride": stride, "fixed": fixed}

    def _bn(self, region, scope, channels, center=True, relu=True):
        prefix = f"{scope}/{self.name('batch_norm_relu')}/{self.name('batch_normalization')}"
        bn = {"relu": relu}
        for leaf in ("gamma", "beta", "moving_mean", "moving_variance"):
            if leaf == "beta" and not center:
                continue
            bn[leaf] = self._var(region, f"{prefix}/{leaf}", [channels], leaf)
        return bn

    def _build(self, depth, width, num_classes, proj_out_dim, num_proj_layers):
        r = "resnet"
        stem_width = 64 * width
        if self.sk:
            self.stem = [
                (self._conv(r, r, 3, 3, stem_width // 2, 2), self._bn(r, r, stem_width // 2)),
                (self._conv(r, r, 3, stem_width // 2, stem_width // 2, 1),
                 self._bn(r, r, stem_width // 2)),
                (self._conv(r, r, 3, stem_width // 2, stem_width, 1), self._bn(r, r, stem_width)),
            ]
        else:
            self.stem = [(self._conv(r, r, 7, 3, stem_width, 2), self._bn(r, r, stem_width))]
        c_in = stem_width
        for g, (count, base, stride) in enumerate(zip(BLOCKS[depth], (64, 128, 256, 512),
                                                      (1, 2, 2, 2)), start=1):
            filters = base * width
            blocks = []
            for b in range(count):
                scope = f"{r}/block_group{g}/{self.name('bottleneck_block')}"
                s = stride if b == 0 else 1
                block = {"stride": s}
                if b == 0:
                    block["shortcut"] = (self._conv(r, scope, 1, c_in, 4 * filters,
                                                    1 if self.sk else s),
                                         self._bn(r, scope, 4 * filters, relu=False))
                block["conv1"] = (self._conv(r, scope, 1, c_in, filters, 1),
                                  self._bn(r, scope, filters))
                if self.sk:
                    sk_scope = f"{scope}/{self.name('sk__conv2d')}"
                    mid = max(int(filters * 0.0625), 32)
                    block["sk"] = {
                        "conv": self._conv(r, sk_scope, 3, filters, 2 * filters, s),
                        "bn": self._bn(r, sk_scope, 2 * filters),
                        "reduce": self._conv(r, sk_scope, 1, filters, mid, 1, fixed=False),
                        "reduce_bn": self._bn(r, sk_scope, mid),
                        "expand": self._conv(r, sk_scope, 1, mid, 2 * filters, 1,
                                             fixed=False),
                    }
                else:
                    block["conv2"] = (self._conv(r, scope, 3, filters, filters, s),
                                      self._bn(r, scope, filters))
                block["conv3"] = (self._conv(r, scope, 1, filters, 4 * filters, 1),
                                  self._bn(r, scope, 4 * filters, relu=False))
                blocks.append(block)
                c_in = 4 * filters
            self.groups.append(blocks)
        p = "projection_head"
        dim = c_in
        for j in range(num_proj_layers):
            last = j == num_proj_layers - 1
            out = proj_out_dim if last else dim
            dense = self._var(p, f"{p}/nl_{j}/{self.name('dense')}/kernel", [dim, out], "kernel")
            bn = self._bn(p, f"{p}/nl_{j}", out, center=not last, relu=not last)
            self.head.append((dense, bn))
        if num_classes:
            scope = f"head_supervised/{self.name('linear_layer')}/{self.name('dense')}"
            self.sup = (self._var("head_supervised", f"{scope}/kernel", [c_in, num_classes],
                                  "kernel"),
                        self._var("head_supervised", f"{scope}/bias", [num_classes], "bias"))

    # --------------------------------------------------------------- forward
    @staticmethod
    def _apply_conv(x, conv):
        kernel, stride = conv["kernel"], conv["stride"]
        k = int(kernel.shape[0])
        if stride > 1:
            total = k - 1
            x = tf.pad(x, [[0, 0], [total // 2, total - total // 2],
                           [total // 2, total - total // 2], [0, 0]])
            return tf.nn.conv2d(x, kernel, stride, "VALID")
        return tf.nn.conv2d(x, kernel, 1, "SAME")

    @staticmethod
    def _apply_bn(x, bn, training):
        axes = list(range(len(x.shape) - 1))
        if training:
            mean, variance = tf.nn.moments(x, axes)
        else:
            mean, variance = bn["moving_mean"], bn["moving_variance"]
        y = (x - mean) * tf.math.rsqrt(variance + EPSILON) * bn["gamma"]
        if "beta" in bn:
            y = y + bn["beta"]
        return tf.nn.relu(y) if bn["relu"] else y

    def _conv_bn(self, x, pair, training):
        return self._apply_bn(self._apply_conv(x, pair[0]), pair[1], training)

    def _sk(self, x, sk, training):
        x = self._apply_bn(self._apply_conv(x, sk["conv"]), sk["bn"], training)
        branches = tf.stack(tf.split(x, 2, axis=-1), axis=0)  # [2, N, H, W, C]
        pooled = tf.reduce_mean(tf.reduce_sum(branches, 0), [1, 2], keepdims=True)
        z = self._apply_bn(tf.nn.conv2d(pooled, sk["reduce"]["kernel"], 1, "SAME"),
                           sk["reduce_bn"], training)
        logits = tf.nn.conv2d(z, sk["expand"]["kernel"], 1, "SAME")
        logits = tf.stack(tf.split(logits, 2, axis=-1), axis=0)  # [2, N, 1, 1, C]
        return tf.reduce_sum(branches * tf.nn.softmax(logits, axis=0), 0)

    def forward(self, images, training):
        out = {}
        x = images
        for index, (conv, bn) in enumerate(self.stem):
            x = self._apply_conv(x, conv)
            if index == len(self.stem) - 1:
                out["initial_conv"] = x
            x = self._apply_bn(x, bn, training)
        x = tf.nn.max_pool2d(x, 3, 2, "SAME")
        out["initial_max_pool"] = x
        for g, blocks in enumerate(self.groups, start=1):
            for block in blocks:
                shortcut = x
                if "shortcut" in block:
                    conv, bn = block["shortcut"]
                    if self.sk:
                        if block["stride"] > 1:
                            shortcut = tf.pad(shortcut, [[0, 0], [0, 1], [0, 1], [0, 0]])
                            shortcut = tf.nn.avg_pool2d(shortcut, 2, block["stride"], "VALID")
                        else:
                            shortcut = tf.nn.avg_pool2d(shortcut, 2, 1, "SAME")
                    shortcut = self._conv_bn(shortcut, (conv, bn), training)
                y = self._conv_bn(x, block["conv1"], training)
                y = (self._sk(y, block["sk"], training) if self.sk
                     else self._conv_bn(y, block["conv2"], training))
                y = self._conv_bn(y, block["conv3"], training)
                x = tf.nn.relu(y + shortcut)
            out[f"block_group{g}"] = x
        x = tf.reduce_mean(x, [1, 2])
        out["final_avg_pool"] = x
        out["proj_head_input"] = x
        h = x
        for dense, bn in self.head:
            h = self._apply_bn(tf.matmul(h, dense), bn, training)
        out["proj_head_output"] = h
        if self.sup is not None:
            out["logits_sup"] = tf.matmul(tf.stop_gradient(x), self.sup[0]) + self.sup[1]
        return out


def save_official_like(model: OfficialLikeModel, path: str,
                       empty_trainable_list: bool = False) -> None:
    """Saves `model` the way the authors' run.py does: a module with `model`
    and `trainable_variables_list`, __call__(images, trainable) traced for
    both values of trainable."""
    module = tf.Module()
    module.model = tf.Module()
    module.model.resnet_model = tf.Module()
    module.model.resnet_model.weights_list = model.region_vars["resnet"]
    module.model._projection_head = tf.Module()
    module.model._projection_head.weights_list = model.region_vars["projection_head"]
    module.model.supervised_head = tf.Module()
    module.model.supervised_head.weights_list = model.region_vars["head_supervised"]
    module.trainable_variables_list = [] if empty_trainable_list else list(model.trainable)

    @tf.function
    def call(images, trainable):
        return model.forward(images, trainable)

    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    call.get_concrete_function(spec, trainable=True)
    call.get_concrete_function(spec, trainable=False)
    module.__call__ = call
    tf.saved_model.save(module, path)
