"""MoCo-style memory: momentum encoder and queue of negatives."""
from simclr_tf2.memory.momentum_encoder import MomentumEncoder
from simclr_tf2.memory.negative_queue import NegativeQueue
