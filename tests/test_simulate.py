"""Simulated streams and split shards, read back with plain tarfile (not WebDataset)."""

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from bmb_stream.cli import main
from bmb_stream.datasets.splits import long_tailed_counts
from bmb_stream.errors import ConfigError
from bmb_stream.simulation.priors import long_tail, shard_priors
from bmb_stream.simulation.recipes import load_recipe
from bmb_stream.simulation.simulate import simulate
from tests.test_sources import write_idx

PER_CLASS_TRAIN, PER_CLASS_TEST = 300, 20


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory):
    """A Fashion-MNIST-format dataset with 300 training and 20 test images per class."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", PER_CLASS_TRAIN), ("t10k", PER_CLASS_TEST)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        images = (labels[:, None, None] * 25 + rng.integers(0, 5, (len(labels), 28, 28))).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def recipe(name, root, *overrides):
    return load_recipe(name, [f"dataset_overrides.root={root}", "dataset_overrides.n1=40", "dataset_overrides.m1=0",
                              "dataset_overrides.gamma_l=10", "shards=8", "samples_per_shard=100", "prior.gamma=10",
                              *overrides])


def read_shard(path):
    """{key: {ext: bytes}} from a tar file, with the standard library only."""
    samples = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def test_shards_read_back_match_the_manifest(tiny_fmnist, tmp_path):
    name, rec = recipe("fmnist_lt_stationary", tiny_fmnist, "labeled_fraction=0.3")
    manifest = simulate(name, rec, tmp_path / "s", progress=False)
    assert len(manifest["shards"]) == 8
    for entry in manifest["shards"]:
        samples = read_shard(tmp_path / "s" / entry["file"])
        hist = np.zeros(10, dtype=int)
        labeled = 0
        for fields in samples.values():
            assert set(fields) <= {"png", "cls", "gt.cls", "json"} and "png" in fields
            assert ("cls" in fields) != ("gt.cls" in fields)  # labeled xor hidden label
            labeled += "cls" in fields
            hist[int(fields.get("cls", fields.get("gt.cls")))] += 1
            assert Image.open(io.BytesIO(fields["png"])).size == (32, 32)
        assert len(samples) == entry["samples"] == 100
        assert labeled == entry["labeled"] and hist.tolist() == entry["class_histogram"]
    total_labeled = sum(e["labeled"] for e in manifest["shards"])
    assert 0.2 * 800 < total_labeled < 0.4 * 800
    seed = [read_shard(tmp_path / "s" / f) for f in manifest["labeled_set"]["files"]]
    seed_hist = np.zeros(10, dtype=int)
    for shard in seed:
        for fields in shard.values():
            assert "cls" in fields and "gt.cls" not in fields
            seed_hist[int(fields["cls"])] += 1
    assert seed_hist.tolist() == manifest["labeled_set"]["class_histogram"] == long_tailed_counts(40, 10, 10)
    assert manifest["test_set"]["class_histogram"] == [PER_CLASS_TEST] * 10
    assert (tmp_path / "s" / "plots" / "stream_prior.png").exists()
    assert manifest["version"] and manifest["recipe"]["seed"] == 0


def test_stream_never_repeats_a_seed_set_image_or_itself(tiny_fmnist, tmp_path):
    name, rec = recipe("fmnist_lt_stationary", tiny_fmnist)
    manifest = simulate(name, rec, tmp_path / "s", progress=False)
    seen = []
    for entry in manifest["shards"]:
        seen += [json.loads(f["json"])["source_index"] for f in read_shard(tmp_path / "s" / entry["file"]).values()]
    assert len(seen) == len(set(seen)) == 800
    seed_keys = {k for f in manifest["labeled_set"]["files"] for k in read_shard(tmp_path / "s" / f)}
    assert not {f"labeled-{i:08d}" for i in seen} & seed_keys


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_same_seed_gives_identical_shards(tiny_fmnist, tmp_path):
    for out in ("a", "b"):
        simulate(*recipe("fmnist_lt_drift", tiny_fmnist), tmp_path / out, progress=False)
    simulate(*recipe("fmnist_lt_drift", tiny_fmnist, "seed=1"), tmp_path / "c", progress=False)
    a, b, c = digests(tmp_path / "a"), digests(tmp_path / "b"), digests(tmp_path / "c")
    assert a == b and len(a) == 8 + 2
    assert a["stream-000000.tar"] != c["stream-000000.tar"]


def test_schedules_give_the_priors_they_promise():
    p = shard_priors({"schedule": "drift", "gamma": 100, "start": "stationary", "end": "reversed"}, 10, 20)
    assert p[0].argmax() == 0 and p[-1].argmax() == 9 and np.allclose(p.sum(1), 1)
    assert np.allclose(p[0], long_tail(10, 100)) and p[0][0] / p[0][9] == pytest.approx(100)
    p = shard_priors({"schedule": "reversed", "gamma": 100}, 10, 3)
    assert all(row.argmax() == 9 for row in p)
    p = shard_priors({"schedule": "rotation", "gamma": 100, "period": 5, "shift": 3}, 10, 20)
    assert [row.argmax() for row in p[::5]] == [0, 3, 6, 9]
    p = shard_priors({"schedule": "class_incremental", "initial_classes": 2, "classes_per_step": 2, "period": 4,
                      "gamma": 10}, 10, 20)
    assert [int((row > 0).sum()) for row in p[::4]] == [2, 4, 6, 8, 10]
    assert np.allclose(shard_priors({"schedule": "uniform"}, 4, 2), 0.25)
    # a schedule's parameters have defaults: the rotation by 1 class every shard, the drift to the reversed tail
    assert np.allclose(shard_priors({"schedule": "rotation", "gamma": 10}, 5, 3)[1], np.roll(long_tail(5, 10), 1))
    assert np.allclose(shard_priors({"schedule": "drift", "gamma": 10}, 5, 2)[1], long_tail(5, 10)[::-1])


def test_drift_stream_head_class_moves(tiny_fmnist, tmp_path):
    manifest = simulate(*recipe("fmnist_lt_drift", tiny_fmnist), tmp_path / "s", progress=False)
    first, last = manifest["shards"][0]["class_histogram"], manifest["shards"][-1]["class_histogram"]
    assert np.argmax(first) == 0 and np.argmax(last) == 9
    manifest = simulate(*recipe("fmnist_class_incremental", tiny_fmnist), tmp_path / "ci", progress=False)
    assert np.flatnonzero(manifest["shards"][0]["class_histogram"]).tolist() == [0, 1]


def test_exhausted_source_stops_or_reuses_as_told(tiny_fmnist, tmp_path):
    # a uniform stream of 12 x 300 images needs 360 per class; only 300 - seed-set images exist
    name, rec = recipe("fmnist_lt_stationary", tiny_fmnist, "prior.schedule=uniform", "shards=12", "samples_per_shard=300")
    stopped = simulate(name, rec, tmp_path / "stop", progress=False)
    assert stopped["stopped_early"]["before_shard"] < 12 and len(stopped["shards"]) == stopped["stopped_early"]["before_shard"]
    name, rec = recipe("fmnist_lt_stationary", tiny_fmnist, "prior.schedule=uniform", "shards=12",
                       "samples_per_shard=300", "on_exhausted=reuse")
    reused = simulate(name, rec, tmp_path / "reuse", progress=False)
    assert len(reused["shards"]) == 12 and reused["reused_samples"] > 0 and reused["stopped_early"] is None


def test_bad_recipes_are_one_line_errors(tiny_fmnist, tmp_path):
    with pytest.raises(ConfigError, match="unknown prior schedule 'zigzag'"):
        simulate(*recipe("fmnist_lt_stationary", tiny_fmnist, "prior.schedule=zigzag"), tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="positive sum"):
        simulate(*recipe("fmnist_lt_stationary", tiny_fmnist, "prior.schedule=custom", "prior.weights=[0,0,0,0,0,0,0,0,0,0]"),
                 tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="prior: preiod: no such key of a prior; its keys: schedule, gamma, shift, period"):
        simulate(*recipe("fmnist_lt_rotation", tiny_fmnist, "prior.preiod=3"), tmp_path / "x", progress=False)
    name, rec = recipe("fmnist_lt_stationary", tiny_fmnist)
    with pytest.raises(ConfigError, match="sharts: no such key of a recipe; its keys: dataset, shards"):
        simulate(name, {**rec, "sharts": 3}, tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="samples_per_shard is required"):
        simulate(name, {k: v for k, v in rec.items() if k != "samples_per_shard"}, tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="on_exhausted=never: must be stop or reuse"):
        simulate(name, {**rec, "on_exhausted": "never"}, tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="not found; shipped recipes"):
        load_recipe("no_such_recipe")
    with pytest.raises(ConfigError, match="nonexistent_key"):
        load_recipe("fmnist_lt_stationary", ["nonexistent_key=1"])


def test_a_different_stream_is_never_overwritten_silently(tiny_fmnist, tmp_path):
    out = tmp_path / "s"
    simulate(*recipe("fmnist_lt_stationary", tiny_fmnist), out, progress=False)
    before = digests(out)
    with pytest.raises(ConfigError, match="already holds a different stream"):
        simulate(*recipe("fmnist_lt_drift", tiny_fmnist), out, progress=False)
    assert digests(out) == before
    again = simulate(*recipe("fmnist_lt_stationary", tiny_fmnist), out, progress=False)  # the same: kept
    assert digests(out) == before and again["recipe_name"] == "fmnist_lt_stationary"
    simulate(*recipe("fmnist_lt_drift", tiny_fmnist), out, overwrite=True, progress=False)
    assert json.loads((out / "manifest.json").read_text())["recipe_name"] == "fmnist_lt_drift"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        simulate(*recipe("fmnist_lt_drift", tiny_fmnist), tmp_path / "other", progress=False)


def test_cli_simulate_and_its_errors(tiny_fmnist, tmp_path, capsys):
    args = ["simulate", "fmnist_lt_stationary", f"out={tmp_path / 's'}", f"root={tiny_fmnist}", "dataset_overrides.n1=40",
            "dataset_overrides.m1=0", "dataset_overrides.gamma_l=10", "shards=3", "samples_per_shard=50", "progress=false"]
    assert main(args) == 0
    assert "3 stream shards (150 images" in capsys.readouterr().out
    assert main(["simulate", "nope"]) == 2
    assert main([*args[:2], f"out={tmp_path / 's'}", "prior.schedule=zigzag", f"root={tiny_fmnist}"]) == 2
    err = capsys.readouterr().err
    assert "shipped recipes" in err and "zigzag" in err and "Traceback" not in err


def test_shards_command_writes_the_split(tiny_fmnist, tmp_path):
    out = tmp_path / "split"
    assert main(["shards", "dataset=fashion_mnist_lt", f"dataset.root={tiny_fmnist}", "dataset.n1=40", "dataset.m1=100",
                 "dataset.gamma_l=10", "dataset.gamma_u=10", f"out={out}", "max_samples=250", "progress=false"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labeled_set"]["class_histogram"] == long_tailed_counts(40, 10, 10)
    assert manifest["unlabeled_set"]["samples"] == sum(manifest["unlabeled_set"]["class_histogram"])
    assert manifest["unlabeled_set"]["class_histogram"][0] == 140
    assert all(e["samples"] <= 250 for e in manifest["unlabeled_set"]["shards"])
    first = read_shard(out / manifest["unlabeled_set"]["files"][0])
    assert all("gt.cls" in f and "cls" not in f for f in first.values())
    assert main(["shards", f"dataset.root={tiny_fmnist}", f"out={out}"]) == 2  # not empty, no overwrite


def test_shards_command_deals_equal_shards_in_a_multiple_of_shard_multiple(tiny_fmnist, tmp_path):
    out = tmp_path / "split"
    assert main(["shards", "dataset=fashion_mnist_lt", f"dataset.root={tiny_fmnist}", "dataset.n1=40", "dataset.m1=100",
                 "dataset.gamma_l=10", "dataset.gamma_u=10", f"out={out}", "max_samples=250", "shard_multiple=4",
                 "progress=false"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("labeled_set", "unlabeled_set", "test_set"):
        entries = manifest[name]["shards"]
        counts = [e["samples"] for e in entries]
        assert len(entries) % 4 == 0 and max(counts) - min(counts) <= 1 and max(counts) <= 250, (name, counts)
        keys = [k for e in entries for k in read_shard(out / e["file"])]
        assert len(keys) == len(set(keys)) == manifest[name]["samples"]  # every sample once
    assert len(manifest["unlabeled_set"]["shards"]) == 4  # 510 images: 3 shards of 250 at most, rounded up to 4


def test_shorter_side_stores_large_images_downscaled_and_keeps_small_ones(tmp_path):
    import torch

    from bmb_stream.datasets.sources import ImagePool
    from bmb_stream.shards.writing import encode_image

    rng = np.random.default_rng(0)
    files = []
    for name, size in (("large.jpg", (500, 375)), ("small.jpg", (200, 150)), ("tall.png", (300, 600))):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / name)
        files.append(str(tmp_path / name))
    pool = ImagePool(files, np.zeros(3, dtype=np.int64))
    key, data = encode_image(pool, 0, shorter_side=256)
    assert key == "jpg" and Image.open(io.BytesIO(data)).size == (341, 256)
    assert encode_image(pool, 1, shorter_side=256) == ("jpg", (tmp_path / "small.jpg").read_bytes())  # unchanged
    key, data = encode_image(pool, 2, shorter_side=256)
    assert key == "png" and Image.open(io.BytesIO(data)).size == (256, 512)
    assert encode_image(pool, 0) == ("jpg", (tmp_path / "large.jpg").read_bytes())  # without it: the file's bytes
    tensors = ImagePool(torch.zeros(1, 3, 28, 28, dtype=torch.uint8), np.zeros(1, dtype=np.int64))
    assert Image.open(io.BytesIO(encode_image(tensors, 0, shorter_side=256)[1])).size == (28, 28)


def test_shards_store_large_images_at_256_by_default_and_say_so(tmp_path, capsys):
    """`bmb-stream shards` downscales by default (shorter_side=256); shorter_side=0 keeps the files' bytes."""
    import webdataset as wds

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / c / f"{i}.jpg")
    args = ["shards", "mode=offline", "dataset=imagefolder_lt", f"dataset.root={tmp_path / 'data'}",
            "dataset.num_classes=2", "dataset.n1=2", "dataset.m1=2", "dataset.gamma_l=1", "dataset.gamma_u=1",
            "progress=false"]

    def sizes(out):
        manifest = json.loads((out / "manifest.json").read_text())
        tar = out / manifest["test_set"]["files"][0]
        return manifest["shorter_side"], {Image.open(io.BytesIO(s["jpg"])).size for s in wds.WebDataset(str(tar))}

    assert main([*args, f"out={tmp_path / 'default'}"]) == 0
    assert "larger than 256 px on their shorter side stored at 256 px (shorter_side=0 keeps" in capsys.readouterr().out
    assert sizes(tmp_path / "default") == (256, {(341, 256)})
    assert main([*args, f"out={tmp_path / 'kept'}", "shorter_side=0"]) == 0
    assert "images stored as they were" in capsys.readouterr().out
    assert sizes(tmp_path / "kept") == (None, {(400, 300)})
