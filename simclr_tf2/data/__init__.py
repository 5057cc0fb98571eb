"""Input data: sources (built-in, folders, TFRecord shards, tfds), their
indexes, subsets, augmentations, pipelines, and skipped images."""
from simclr_tf2.data import augment
from simclr_tf2.data.builtin import ArrayDataset, load_builtin, stratified_split
from simclr_tf2.data.index import IndexStore
from simclr_tf2.data.listing import list_folder, verify_files
from simclr_tf2.data.features import feature_dataset
from simclr_tf2.data.pipeline import (PIPELINE_MODES, build_dataset, build_from_config,
                                      distribute)
from simclr_tf2.data.sources import (Source, builtin_source, folder_source, make_source,
                                     records_source)
from simclr_tf2.data.tfds_source import tfds_source
from simclr_tf2.data.subsets import labelled_subset, stratified_subset, subset_from_ids
from simclr_tf2.errors import DataError
