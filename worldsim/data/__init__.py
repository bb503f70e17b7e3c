"""Recorded Crafter data: the shard/manifest format, the exploration policy, the recorder and the loader.

Importing this package is cheap (no crafter, no torch); ``worldsim.data.record`` and
``worldsim.data.policy`` load the game.
"""

from worldsim.data.dataset import Clip, Dataset, EpisodeStore, open_dataset
from worldsim.data.format import DatasetError, split_of_seed

__all__ = ["Clip", "Dataset", "DatasetError", "EpisodeStore", "open_dataset", "split_of_seed"]
