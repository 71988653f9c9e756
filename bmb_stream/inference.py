"""Using an exported model (models/exported.py): `bmb-stream eval` scores it on a test set as a run's
evaluation does; `bmb-stream predict` labels images (files, folders of them, or WebDataset shards)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from bmb_stream.errors import ConfigError, DataNotFound, WriteFailed
from bmb_stream.models.exported import load_exported
from bmb_stream.storage.atomic import atomic_write, write_failure

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def exported_config(meta: dict, overrides: list[str]):
    """The configuration the exported model was trained with (its JSON's), with KEY=VALUE `overrides`
    (another dataset.root, stream.test_urls, eval.batch_size, ...)."""
    from bmb_stream.config import config_from_stored

    for arg in overrides:
        key = arg.partition("=")[0]
        if "=" not in arg or "." not in key and key not in ("mode", "seed"):
            raise ConfigError(f"{arg!r}: eval takes KEY=VALUE overrides of the run's config, such as dataset.root=... "
                              f"or stream.test_urls=... (the run's dataset and model stay; another group option does not apply)")
    stored = OmegaConf.merge(OmegaConf.create(meta["config"]), OmegaConf.from_dotlist(list(overrides)))
    return config_from_stored(stored, "the exported model's config")


def test_data(cfg) -> tuple[Dataset, list[int], list[list[int]] | None]:
    """The test set a run of `cfg` evaluates on (uint8 images after the test view), its labeled counts per
    class (the many/medium/few groups) and, where a stream introduces classes, its class segments."""
    if cfg.mode == "offline":
        from bmb_stream.datasets import build_split

        split = build_split(cfg.dataset, seed=cfg.seed, progress=False)
        return split.test, split.labeled_per_class, None
    from bmb_stream.datasets.transforms import build_views
    from bmb_stream.engine.stream_source import prepare_stream
    from bmb_stream.shards.reading import EncodedImages

    source = prepare_stream(cfg)
    views = build_views(cfg.dataset.image_size, cfg.dataset.mean, resize=True, randaugment=cfg.dataset.randaugment)
    labeled = np.bincount(source.labeled[1], minlength=cfg.dataset.num_classes).tolist()
    segments = source.segments if source.segments and len(source.segments) > 1 else None
    return EncodedImages(source.test[0], source.test[1], views["test"]), labeled, segments


def evaluate_exported(path: str | Path, overrides: list[str] = (), device: str = "cpu") -> dict:
    """An exported model's evaluation record (balanced, top-1, per-class, many/medium/few accuracy, test
    loss) on the test set of the run it came from, or another (`overrides`)."""
    from bmb_stream.evaluation.evaluator import Evaluator

    model, meta = load_exported(path, device)
    cfg = exported_config(meta, list(overrides))
    test, labeled_per_class, segments = test_data(cfg)
    evaluator = Evaluator(test, meta["num_classes"], labeled_per_class, torch.device(device),
                          batch_size=cfg.eval.batch_size, many_threshold=cfg.dataset.many_threshold,
                          few_threshold=cfg.dataset.few_threshold, segments=segments)
    return evaluator.evaluate(model)


class ImageFiles(Dataset):
    """Image files, decoded as RGB and passed through `transform`; yields (image, index)."""

    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from bmb_stream.shards.reading import decode_image

        return self.transform(decode_image(self.paths[i].read_bytes(), str(self.paths[i]))), i


def image_files(sources: list[str]) -> list[Path]:
    """The image files among `sources`: files, and folders searched recursively (sorted)."""
    found: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found += sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif source.is_file():
            found.append(source)
        else:
            raise DataNotFound(f"{source}: no such file or folder")
    return found


def predict(path: str | Path, sources: list[str], out: str | Path, batch_size: int = 256,
            device: str = "cpu", num_workers: int = 2) -> int:
    """Predict every image of `sources` (image files or folders; or WebDataset shard URLs, patterns or a
    folder of shards, `.tar`) and write one CSV row per image: its file (or shard URL and sample key), the
    predicted class and its name, and the softmax probability of that class. Returns the rows written."""
    from bmb_stream.datasets.transforms import build_views
    from bmb_stream.shards.reading import EncodedImages, shard_samples

    model, meta = load_exported(path, device)
    views = build_views(meta["input_size"], meta["mean"], resize=True)  # the test view the run evaluated with
    shards = [s for s in sources if ".tar" in s or s.startswith(("s3://", "http://", "https://"))]
    if shards:
        from bmb_stream.shards.urls import expand_urls

        samples = list(shard_samples(expand_urls(shards), split_by_rank=False))
        names = [f"{s['url']}#{s['key']}" for s in samples]
        dataset = EncodedImages([s["image"] for s in samples], np.arange(len(samples)), views["test"])
    else:
        files = image_files(sources)
        names, dataset = [str(p) for p in files], ImageFiles(files, views["test"])
    if not names:
        raise DataNotFound(f"{', '.join(sources)}: no image found")
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers if len(dataset) > batch_size else 0)
    rows = []
    with torch.inference_mode():
        for images, index in loader:
            probabilities = model(images.to(device)).float().softmax(1)
            confidence, predicted = probabilities.max(1)
            rows += [(names[i], c, meta["class_names"][c], f"{p:.4f}")
                     for i, c, p in zip(index.tolist(), predicted.tolist(), confidence.tolist())]
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out, "w") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["image", "class", "class_name", "probability"])
            writer.writerows(rows)
    except OSError as e:
        raise WriteFailed(out, write_failure(out, e)) from None
    return len(rows)
