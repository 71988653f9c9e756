import re

import pytest
from omegaconf import OmegaConf

from bmb_stream.algorithms import ALGORITHMS
from bmb_stream.cli import main
from bmb_stream.config import compose, option_config, stored_config, typed, validate
from bmb_stream.config_schema import OPTION_SCHEMAS, Config, CountsDataset, Dataset, Retry, Train, group_options
from bmb_stream.errors import ConfigError
from bmb_stream.redaction import redacted
from tests.helpers import cli_error

EXPERIMENTS = group_options("experiment")


def test_every_published_setting_has_an_experiment_file():
    expected = {"cifar10_lt_r50", "cifar10_lt_r100", "cifar10_lt_r150", "cifar10_lt_r100_uniform",
                "cifar10_lt_r100_reversed", "cifar100_lt_r20", "cifar100_lt_r50", "cifar100_lt_r100",
                "imagenet_lt_20", "imagenet_lt_50", "imagenet127_1pct_32px", "imagenet127_1pct_64px",
                "imagenet127_10pct_32px", "imagenet127_10pct_64px", "fmnist_lt_r100", "demo"}
    assert expected <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("method", ["bmb", "fixmatch", "supervised"])
def test_every_experiment_composes(experiment, method, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs are found from any working directory
    for mode in ("offline", "stream"):
        cfg = compose([f"mode={mode}", f"experiment={experiment}", f"method={method}", f"dataset.root={tmp_path}"])
        assert cfg.method.name == method and cfg.mode == mode
        assert cfg.run.dir.startswith("runs/")
        obj = typed(cfg)  # what the run reads: the schema's objects, and what its config.yaml gives back
        assert type(obj.method) is ALGORITHMS[method].Config and isinstance(obj.dataset, Dataset)
        (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(redacted(obj)))
        assert stored_config(tmp_path / "config.yaml") == obj


def test_stream_is_the_default_mode_with_its_own_defaults(monkeypatch, capsys):
    import bmb_stream.engine.offline
    import bmb_stream.engine.stream_loop

    cfg = compose([])
    assert cfg.mode == "stream" and cfg.stream.recipe == "fmnist_lt_drift"
    assert cfg.train.ema_warmup is True and cfg.method.estimate.kind == "ema"
    # `bmb-stream --mode offline` as typed: the configuration the command line hands the run (which
    # returns at once, as a rank other than 0 does: nothing to print)
    given = []
    for module, run in ((bmb_stream.engine.offline, "run_offline"), (bmb_stream.engine.stream_loop, "run_stream")):
        monkeypatch.setattr(module, run, lambda c, command=None: given.append(c) or {"rank": 1})
    for argv in (["--mode=offline"], ["--mode", "offline"]):
        assert main(argv) == 0, capsys.readouterr().err
    assert [(c.mode, c.method.estimate.kind) for c in given] == [("offline", "cumulative")] * 2
    assert compose(["method.estimate.kind=cumulative"]).method.estimate.kind == "cumulative"  # the user wins


def test_reference_recipe_values_reach_the_config(tmp_path):
    cfg = compose(["experiment=cifar10_lt_r100", f"dataset.root={tmp_path}"])
    assert (cfg.model.name, cfg.dataset.gamma_l, cfg.dataset.n1, cfg.dataset.m1) == ("wrn28_2", 100, 1500, 3000)
    b = cfg.method.bank
    assert (b.capacity, b.draw, b.beta_put, b.beta_get) == (256, 128, 2.0, 1.0)
    assert b.features == "weak"  # the reference's CIFAR-10 best scripts: the weak view's feature
    assert compose(["experiment=cifar100_lt_r20", f"dataset.root={tmp_path}"]).method.bank.features == "strong"
    assert (cfg.method.weights.alpha, cfg.method.tau, cfg.train.ema_decay, cfg.optim.lr) == (1.5, 0.95, 0.999, 0.002)
    cfg = compose(["experiment=imagenet_lt_50", f"dataset.root={tmp_path}"])
    assert (cfg.method.bank.capacity, cfg.method.bank.draw, cfg.method.tau, cfg.optim.name) == (2048, 512, 0.7, "sgd")
    assert cfg.dataset.many_threshold == 50 and cfg.dataset.few_threshold == 10
    cfg = compose(["experiment=cifar10_lt_r100_reversed", f"dataset.root={tmp_path}"])
    assert cfg.dataset.gamma_u == -100


@pytest.mark.parametrize("override,message", [
    ("method=nope", "method=nope: unknown option; accepted: abc, bmb, cdmad, fixmatch, supervised"),
    ("model=vgg", "model=vgg: unknown option"),
    ("method.tau=1.5", "method.tau=1.5: must be in (0, 1]"),
    ("method.tau=0", "method.tau=0: must be in (0, 1]"),
    ("train.batch_labeled=-4", "train.batch_labeled=-4: must be a positive integer"),
    ("method.bank.capacity=0", "method.bank.capacity=0: must be a positive integer"),
    ("dataset.root=/no/such/dir", "dataset.root=/no/such/dir: folder not found"),
    ("optim.name=rmsprop", "optim.name=rmsprop: must be adam or sgd"),
    ("mode=online", "mode=online: unknown option; accepted: offline, stream"),
    ("stream.shards_per_experience=0", "stream.shards_per_experience=0: must be a positive integer"),
    ("stream.resampled=true", "stream.max_experiences=null: must be set for a resampled (endless) stream"),
    ("stream.on_shard_error=ignore", "stream.on_shard_error=ignore: must be fail or skip"),
    ("storage.retry.budget_s=-1", "storage.retry.budget_s=-1: must be >= 0"),
    ("storage.retry.backoff_s=0", "storage.retry.backoff_s=0: must be positive"),
    # values Hydra cannot convert to the key's type, and keys no option declares
    ("train.steps=abc", "train.steps=abc: must be a positive integer"),
    ("train.steps=1.5", "train.steps=1.5: must be a positive integer"),
    ("resume=maybe", "resume=maybe: must be true, false or auto"),
    ("method.tau=abc", "method.tau=abc: must be a number (in (0, 1])"),
    ("optim.lr=1e-3x", "optim.lr=1e-3x: must be a number (positive)"),
    ("train.amp=yes", "train.amp=yes: must be true or false"),  # OmegaConf alone would read yes/no/on/off
    ("method.bank.enabled=off", "method.bank.enabled=off: must be true or false"),
    ("seed=null", "seed=null: must be an integer >= 0"),
    ("dataset.mean=[1,a,3]", "dataset.mean=[1,a,3]: must be a list of three numbers"),
    ("method.bank.features=both", "method.bank.features=both: must be strong or weak"),
    ("train=3", "train=3: must be a section of keys"),
    ("method.tua=0.9", "method.tua: no such configuration key (did you mean method.tau?)"),
    ("dataset.list_dir=x", "dataset.list_dir: not a key of this configuration"),
])
def test_bad_values_name_the_key_and_what_is_accepted(override, message):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert message in str(err.value)


def test_each_method_gets_its_own_settings_for_the_mode_and_the_experiment():
    # stream mode and the demo experiment give BMB settings; FixMatch has none of them
    assert compose([]).method.bank.labeled is True and compose([]).method.estimate.kind == "ema"
    fixmatch = compose(["method=fixmatch"]).method
    assert set(fixmatch) == {"name", "tau", "lambda_u", "warmup"}
    imagenet = ["experiment=imagenet_lt_20", "stream.urls=s3://bucket/x", "mode=stream"]
    assert compose(["method=fixmatch", *imagenet]).method.tau == 0.7  # BMB's recipe, where FixMatch has the key
    assert compose(["method=cdmad", *imagenet]).method.tau == 0.0  # no CDMAD settings for it: CDMAD's defaults
    # set on the command line, a key the chosen method does not have is refused
    for override, message in [("method.bank.capacity=8", "method.bank.capacity: not a key of this configuration"),
                               ("method.bank.capcity=3", "method.bank.capcity: no such configuration key (did you mean "
                                                         "method.bank.capacity?)")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            compose(["method=fixmatch", override])


def test_values_are_typed_and_choices_are_plain_strings(tmp_path):
    cfg = compose(["experiment=cifar10_lt_r100", f"dataset.root={tmp_path}", "optim.lr=1"])
    assert type(cfg.optim.lr) is float and type(cfg.dataset.gamma_l) is float and type(cfg.train.steps) is int
    assert type(cfg.optim.schedule) is str and "schedule: constant" in OmegaConf.to_yaml(cfg)
    saved = OmegaConf.to_yaml(cfg, resolve=True)  # what config.yaml holds, loaded back
    assert OmegaConf.to_container(OmegaConf.create(saved)) == OmegaConf.to_container(cfg)


def test_typed_config_shows_the_schema_defaults_and_reads_older_run_folders(tmp_path):
    cfg = typed(compose(["mode=offline", "method=abc"]))
    assert isinstance(cfg, Config) and isinstance(cfg.train, Train) and cfg.storage.retry == Retry()
    assert type(cfg.dataset) is CountsDataset and cfg.dataset.ratio_rounding == "ceil"
    assert typed(cfg) is cfg
    saved = OmegaConf.to_container(redacted(cfg))
    del saved["dataset"]["ratio_rounding"], saved["train"]["compile"]  # written before these keys existed
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    assert stored_config(tmp_path / "config.yaml") == cfg
    saved["model"]["depth"] = 28  # a model no schema declares
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    with pytest.raises(ConfigError, match="model section .* fits no model schema"):
        stored_config(tmp_path / "config.yaml")


def test_validation_does_not_change_the_config(tmp_path):
    cfg = compose(["mode=stream", "experiment=imagenet_lt_50", "stream.urls=s3://bucket/x"])
    before = OmegaConf.to_container(cfg)
    validate(cfg)
    assert OmegaConf.to_container(cfg) == before
    cfg.dataset.root = "???"  # compose, not validate, drops the folders a stream with shards does not need
    with pytest.raises(ConfigError, match="dataset.root is required"):
        validate(cfg)


def test_every_option_file_is_on_its_groups_schema():
    for group, schemas in OPTION_SCHEMAS.items():
        for option in group_options(group):
            assert OmegaConf.get_type(option_config(group, option)) in schemas.values()


def test_missing_data_root_is_named():
    with pytest.raises(ConfigError, match="dataset.root is required"):
        compose(["experiment=cifar10_lt_r100"])
    # a stream run reads its images from the shards: the dataset's folder is not needed
    assert compose(["mode=stream", "experiment=imagenet_lt_50", "stream.urls=s3://bucket/inlt/unlabeled-"]).dataset.root is None


def test_image_folder_counts_its_classes_unless_told(tmp_path):
    for name in ("cat", "dog", "fox", ".cache"):  # a hidden folder is not a class
        (tmp_path / "train" / name).mkdir(parents=True)
    base = ["mode=offline", "dataset=imagefolder_lt", f"dataset.root={tmp_path}"]
    assert compose(base).dataset.num_classes == 3
    assert compose(base + ["dataset.num_classes=5"]).dataset.num_classes == 5  # given: kept (the loader then says it differs)
    with pytest.raises(ConfigError, match="dataset.num_classes is required .*counted from <root>/train"):
        compose(["mode=offline", "dataset=imagefolder_lt", f"dataset.root={tmp_path / 'elsewhere'}"])


def test_credentials_are_redacted_from_saved_configs_and_messages():
    from omegaconf import OmegaConf

    from bmb_stream.redaction import redacted

    cfg = compose(["storage.s3.access_key_id=AKIA-TEST", "storage.s3.secret_access_key=s3cr3t-value"])
    text = OmegaConf.to_yaml(redacted(cfg))
    assert "s3cr3t-value" not in text and "AKIA-TEST" not in text and cfg.storage.s3.secret_access_key == "s3cr3t-value"
    with pytest.raises(ConfigError) as err:
        compose(["storage.s3.secret_key=s3cr3t-value"])  # a misspelt key: Hydra's message would echo the value
    assert "s3cr3t-value" not in str(err.value)


def test_cli_bad_value_is_one_line_exit_2(capsys):
    assert "method.tau=2" in cli_error(["method.tau=2"], capsys)


def test_cli_unknown_flag_and_help(capsys):
    assert main(["--frobnicate"]) == 2
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--mode" in out and "fmnist_lt_r100" in out and "examples:" in out


@pytest.mark.parametrize("experiment", ["imagenet_lt_50", "cifar10_lt_r100"])
def test_a_protocol_keeps_its_global_batch_and_length_on_any_number_of_ranks(experiment, monkeypatch, tmp_path):
    from bmb_stream import distributed
    from bmb_stream.engine.batches import per_rank_batches

    cfg = typed(compose([f"experiment={experiment}", f"dataset.root={tmp_path}"]))
    seen = set()
    for world in (1, 2, 8):
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        labeled, unlabeled = per_rank_batches(cfg.train)
        seen.add((labeled * world, unlabeled * world, cfg.train.steps, cfg.optim.lr))  # same steps: same epochs
    assert seen == {(64, 64, cfg.train.steps, cfg.optim.lr)}
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ConfigError, match=r"train.batch_labeled=64 is the whole run's batch .* 3 ranks cannot share"):
        per_rank_batches(cfg.train)
    default = typed(compose([]))  # not a protocol: each rank's batch, as given
    monkeypatch.setattr(distributed, "world_size", lambda: 8)
    assert per_rank_batches(default.train) == (default.train.batch_labeled, default.train.batch_unlabeled)

