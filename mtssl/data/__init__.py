"""Data: the procedural scene engine, synthetic datasets on disk, real images."""

from mtssl.data.real import ImageFolder, PackagePhotos, TfdsImages
from mtssl.data.scenes import SceneConfig
from mtssl.data.synthetic import SyntheticScenes, batched_dataset, from_config

__all__ = ["ImageFolder", "PackagePhotos", "SceneConfig", "SyntheticScenes",
           "TfdsImages", "batched_dataset", "from_config"]
