"""Data: the procedural scene engine and loaders for synthetic datasets."""

from mtssl.data.scenes import SceneConfig
from mtssl.data.synthetic import SyntheticScenes, batched_dataset, from_config

__all__ = ["SceneConfig", "SyntheticScenes", "batched_dataset", "from_config"]
