"""bmb-stream: long-tailed semi-supervised learning with a Balanced Memory Bank, offline and on streams.

The Python API (docs/python-api.md):

    from bmb_stream import compose, run_stream, run_offline
    cfg = compose(["experiment=demo", "seed=1"])      # the command line's overrides
    summary = run_stream(cfg)                          # or run_offline(compose(["mode=offline", ...]))

Names are imported on first use, so that `import bmb_stream` stays quick.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it
API = {
    "compose": "bmb_stream.config",  # overrides -> the checked configuration (an OmegaConf DictConfig)
    "typed": "bmb_stream.config",  # the configuration as the schema's dataclasses
    "stored_config": "bmb_stream.config",  # a run folder's config.yaml, typed
    "Config": "bmb_stream.config_schema",
    "run_offline": "bmb_stream.engine.offline",  # a configuration -> the run's summary (summary.json)
    "run_stream": "bmb_stream.engine.stream_loop",
    "Learner": "bmb_stream.engine.learner",  # model, EMA model, optimizer, algorithm; train_step, state_dict
    "load_checkpoint": "bmb_stream.engine.checkpoint",
    "build_model": "bmb_stream.models",
    "load_exported": "bmb_stream.models.exported",  # a model written by `bmb-stream export`, and its JSON
    "ALGORITHMS": "bmb_stream.algorithms",  # name -> algorithm class
    "BmbError": "bmb_stream.errors",  # every error bmb-stream raises for the user to fix
}
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        return getattr(importlib.import_module(API[name]), name)
    raise AttributeError(f"module 'bmb_stream' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
