"""The package and, inside it, the folders users browse at the top of the repository: configs/ (the
Hydra configuration) and streams/ (the stream recipes) become bmb_stream/configs and bmb_stream/streams
in a wheel. Everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import find_packages, setup

SHIPPED = ("configs", "streams")


def folders(top: str) -> list[str]:
    return [top, *(f"{top}.{'.'.join(p.relative_to(top).parts)}" for p in sorted(Path(top).rglob("*")) if p.is_dir())]


setup(
    packages=find_packages(include=["bmb_stream*"]) + [f"bmb_stream.{f}" for top in SHIPPED for f in folders(top)],
    package_dir={f"bmb_stream.{top}": top for top in SHIPPED},
    package_data={f"bmb_stream.{f}": ["*.yaml", "*.md"] for top in SHIPPED for f in folders(top)},
)
