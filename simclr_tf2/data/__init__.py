"""Input data: sources (built-in, folders, tfds), subsets, augmentations, pipelines."""
from simclr_tf2.data import augment
from simclr_tf2.data.builtin import ArrayDataset, load_builtin, stratified_split
from simclr_tf2.data.pipeline import (PIPELINE_MODES, build_dataset, build_from_config,
                                      distribute, feature_dataset)
from simclr_tf2.data.sources import (DataError, Source, builtin_source, folder_source,
                                     make_source, scan_image_folder, tfds_source)
from simclr_tf2.data.subsets import labelled_subset, stratified_subset, subset_from_ids
