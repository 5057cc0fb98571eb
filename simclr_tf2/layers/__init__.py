"""Building-block layers of the SimCLRv2 ResNets."""
from simclr_tf2.layers.conv_bn import (BatchNormRelu, FixedPaddingConv2D, NormalizedLayer,
                                       NormSettings)
from simclr_tf2.layers.selective_kernel import SelectiveKernelAttention, SelectiveKernelConv2D
from simclr_tf2.layers.squeeze_excite import SqueezeExcite
