"""bmb-stream: long-tailed semi-supervised learning with a Balanced Memory Bank, offline and on streams."""

__version__ = "0.1.0"
