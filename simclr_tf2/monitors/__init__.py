"""Monitors of a representation while it trains: effective rank and kNN accuracy."""
from simclr_tf2.monitors.representation import effective_rank, knn_predict
