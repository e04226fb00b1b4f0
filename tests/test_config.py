import copy

import pytest
import yaml

from conclugen.config import ConfigError, load_checked, missing_paths, validate
from tests.conftest import ROOT, run_snakemake

SCHEMA = ROOT / "config" / "schema.yaml"


def demo_config():
    return yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())


def test_shipped_configs_satisfy_the_schema():
    for name in ("demo.yaml", "config.yaml"):
        validate(yaml.safe_load((ROOT / "config" / name).read_text()), SCHEMA)


def test_defaults_are_filled_in():
    config = demo_config()
    del config["max_failure_fraction"]
    validate(config, SCHEMA)
    assert config["max_failure_fraction"] == 0.05
    assert config["datasets"]["caer"]["enabled"] is True


@pytest.mark.parametrize(
    "path",
    [
        ("bogus",),
        ("datasets", "meld", "shardz"),
        ("datasets", "caer", "source", "archives", 0, "md5"),
    ],
)
def test_unknown_key_is_refused_and_named(path):
    config = demo_config()
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = 1
    with pytest.raises(ConfigError) as err:
        validate(config, SCHEMA)
    dotted = ".".join(map(str, path))
    assert f"unknown key {dotted}" in str(err.value)


def test_wrong_type_is_refused_and_named():
    config = demo_config()
    config["datasets"]["mosei"]["shards"] = "four"
    with pytest.raises(ConfigError, match=r"datasets\.mosei\.shards: 'four' is not of type"):
        validate(config, SCHEMA)


def test_archive_needs_exactly_one_of_url_and_path():
    config = demo_config()
    config["datasets"]["caer"]["source"]["archives"][0]["url"] = "https://example.org/CAER.zip"
    with pytest.raises(ConfigError, match=r"datasets\.caer\.source\.archives\.0"):
        validate(config, SCHEMA)


def test_missing_user_path_is_refused_and_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths resolve where nothing was generated
    config = demo_config()
    config["lookalike"]["enabled"] = False
    validate(config, SCHEMA)
    problems = missing_paths(config)
    assert any(p.startswith("datasets.caer.source.archives.0.path:") for p in problems)
    with pytest.raises(ConfigError, match="datasets.voxceleb2.source.archives.0.path"):
        load_checked(copy.deepcopy(config), SCHEMA)


def test_lookalike_sources_need_not_exist_yet():
    config = demo_config()
    assert load_checked(config, SCHEMA) is config


def test_snakemake_refuses_unknown_key_before_any_job(tmp_path):
    config = demo_config()
    config["datasets"]["meld"]["shardz"] = 3
    config["exclusions"] = str(ROOT / "config" / "exclusions.yaml")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = run_snakemake(["--configfile", str(cfg), "--cores", "1"], tmp_path, check=False)
    assert proc.returncode != 0
    assert "unknown key datasets.meld.shardz" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_pretrain_hparams_in_the_schema_are_the_code_s():
    from conclugen.pretrain import HPARAMS

    schema = yaml.safe_load(SCHEMA.read_text())
    hparams = schema["properties"]["pretrain"]["properties"]["hparams"]["properties"]
    assert set(hparams) == set(HPARAMS)
    assert set(hparams["weights"]["properties"]) == set(HPARAMS["weights"])


def test_missing_local_weights_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = demo_config()
    config["lookalike"]["enabled"] = False
    validate(config, SCHEMA)
    assert "features.audio.weights: results/lookalike/weights/davenet.pth does not exist" in (
        missing_paths(config)
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dataset": "mosei", "methods": ["conclugen"]}, "mosei is not an enabled dataset"),
        ({"dataset": "meld", "methods": ["instancecont"]}, "instancecont needs"),
    ],
)
def test_inconsistent_pretraining_is_refused(change, message):
    config = demo_config()
    config["datasets"]["mosei"]["enabled"] = False
    config["pretrain"].update(change)
    with pytest.raises(ConfigError, match=message):
        load_checked(config, SCHEMA)


def test_downstream_hparams_in_the_schema_are_the_code_s():
    from conclugen.downstream import HPARAMS, TASKS

    schema = yaml.safe_load(SCHEMA.read_text())
    down = schema["properties"]["downstream"]["properties"]
    # lr and weight decay are per dataset (downstream.tasks), everything else is shared
    assert set(down["hparams"]["properties"]) == set(HPARAMS) - {"lr", "weight_decay"}
    assert set(down["tasks"]["properties"]) == set(TASKS)
    task = schema["$defs"]["task"]["properties"]
    assert set(task) == {"lr", "weight_decay"}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"methods": ["conclugen", "conclu"]},
            r"downstream.methods: \['conclu'\] are not pretrained",
        ),
        ({"finetune": ["generative"]}, r"downstream.finetune: \['generative'\] are not evaluated"),
    ],
)
def test_inconsistent_downstream_is_refused(change, message):
    config = demo_config()
    config["pretrain"]["methods"] = ["conclugen", "generative"]
    config["downstream"].update({"methods": ["conclugen"], **change})
    with pytest.raises(ConfigError, match=message):
        load_checked(config, SCHEMA)
