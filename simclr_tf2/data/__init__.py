"""Input data: built-in offline datasets (more sources arrive with the data issue)."""
from simclr_tf2.data.builtin import ArrayDataset, load_builtin, stratified_split
