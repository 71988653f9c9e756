"""Data: sources (the user's own copies on disk), long-tailed splits and the augmentation views."""

from bmb_stream.datasets.build import SplitData, build_split

__all__ = ["SplitData", "build_split"]
