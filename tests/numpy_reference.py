"""Independent NumPy transcriptions used as references by the tests."""
import numpy as np


def conv2d(x, kernel, stride=1, pad=(0, 0)):
    """Direct NHWC convolution; pad = (before, after) on both spatial axes."""
    x = np.pad(x, [(0, 0), pad, pad, (0, 0)])
    n, h, w, _ = x.shape
    kh, kw, _, out_c = kernel.shape
    oh = (h - kh) // stride + 1
    ow = (w - kw) // stride + 1
    out = np.zeros((n, oh, ow, out_c), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out


def batch_norm_inference(x, gamma, beta, mean, var, eps):
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
