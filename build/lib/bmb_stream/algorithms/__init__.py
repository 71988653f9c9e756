"""The algorithms, by the name `method=NAME` chooses. Adding one: its file here and its line below
(README: "Add an algorithm")."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from bmb_stream.algorithms.abc import ABC
from bmb_stream.algorithms.base import Algorithm, Batch, Setup, StepOutput
from bmb_stream.algorithms.bmb import BMB
from bmb_stream.algorithms.cdmad import CDMAD
from bmb_stream.algorithms.fixmatch import FixMatch
from bmb_stream.algorithms.supervised import Supervised

ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (
    Supervised,
    FixMatch,
    BMB,
    ABC,
    CDMAD,
)}

__all__ = ["ALGORITHMS", "Algorithm", "Batch", "Setup", "StepOutput", "build_algorithm"]


def build_algorithm(cfg, setup: Setup) -> Algorithm:
    """The algorithm `cfg.name` names, handed its config as its schema's typed object (given as one, or
    as a DictConfig or dict whose missing keys take the schema's defaults)."""
    cls = ALGORITHMS[cfg.name if not isinstance(cfg, dict) else cfg["name"]]
    if isinstance(cfg, cls.Config):
        return cls(cfg, setup)
    given = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    return cls(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls.Config), given)), setup)
