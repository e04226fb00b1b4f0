import copy

import pytest
import yaml

from conclugen.config import (
    ConfigError,
    check_config,
    load_checked,
    missing_paths,
    needed_missing,
    overlay_problem,
    source_files,
    validate,
)
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


def test_a_user_path_under_home_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "CAER.zip").write_bytes(b"PK")
    config = demo_config()
    config["lookalike"]["enabled"] = False
    config["datasets"]["caer"]["source"]["archives"] = [{"path": "~/data/CAER.zip"}]
    validate(config, SCHEMA)
    assert not any(p.startswith("datasets.caer.") for p in missing_paths(config))
    assert source_files(config, "caer") == [str(tmp_path / "data" / "CAER.zip")]


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
        ({"dataset": "meld", "methods": ["instancecont"]}, "instancecont train on"),
        ({"dataset": "meld", "methods": ["conclugen", "byol", "dino"]}, "byol, dino train on"),
    ],
)
def test_inconsistent_pretraining_is_refused(change, message):
    config = demo_config()
    config["datasets"]["mosei"]["enabled"] = False
    config["pretrain"].update(change)
    with pytest.raises(ConfigError, match=message):
        load_checked(config, SCHEMA)


@pytest.mark.parametrize(
    "section, change, message",
    [
        (
            "views",
            {"crop_scale": [1.0, 0.3]},
            r"views.crop_scale: \[1.0, 0.3\] is not \[low, high\]",
        ),
        ("views", {"jitter_strength": [0.8, 0.8, 0.8, 0.7]}, "hue strength is at most 0.5"),
        ("augment", {"audio": {"max_width": [0.35, 0.15]}}, "augment.audio.max_width"),
        ("augment", {"video": {"crop_ratio": [1.2, 0.8]}}, "augment.video.crop_ratio"),
    ],
)
def test_augmentation_ranges_are_low_then_high(section, change, message):
    config = demo_config()
    config["features"][section] = {**config["features"].get(section, {}), **change}
    with pytest.raises(ConfigError, match=message):
        load_checked(config, SCHEMA)


def test_downstream_hparams_in_the_schema_are_the_code_s():
    from conclugen.downstream import HPARAMS, TASKS

    schema = yaml.safe_load(SCHEMA.read_text())
    down = schema["properties"]["downstream"]["properties"]
    # lr and weight decay are per dataset (downstream.tasks), the share of train labels per
    # label-efficiency job (downstream.label_efficiency.fractions), everything else is shared
    per_job = {"lr", "weight_decay", "train_fraction"}
    assert set(down["hparams"]["properties"]) == set(HPARAMS) - per_job
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
        (
            {"label_efficiency": {"methods": ["supervised", "conclu"]}},
            r"downstream.label_efficiency.methods: \['conclu'\] are not pretrained",
        ),
        (
            {"regression": {"loss_methods": ["generative"]}},
            r"downstream.regression.loss_methods: \['generative'\] are not evaluated",
        ),
        ({"regression": {"loss": "best"}}, "downstream.regression.loss: best is not one"),
        (
            {"regression": {"loss": "ce", "losses": {"ce": {"ce": 1.0}}}},
            "downstream.regression.losses.ce: needs ccc or mse",
        ),
    ],
)
def test_inconsistent_downstream_is_refused(change, message):
    config = demo_config()
    config["pretrain"]["methods"] = ["conclugen", "generative"]
    config["downstream"].update({"methods": ["conclugen"], **change})
    with pytest.raises(ConfigError, match=message):
        load_checked(config, SCHEMA)


PAPER = ROOT / "config" / "config.yaml"


def test_a_glob_that_matches_nothing_is_named_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = demo_config()
    config["lookalike"]["enabled"] = False
    archives = config["datasets"]["caer"]["source"]["archives"]
    archives[:] = [{"path": "CAER.zip"}, {"path": "parts/CAER_part*"}]
    problems = missing_paths(validate(config, SCHEMA))
    assert "datasets.caer.source.archives.0.path: CAER.zip does not exist" in problems
    assert "datasets.caer.source.archives.1.path: parts/CAER_part* matches no file" in problems
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "CAER_partaa").touch()
    assert not any("caer.source.archives.1" in p for p in missing_paths(config))


def test_check_config_returns_missing_inputs_and_resolves_exclusions_in_the_checkout(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a working directory without config/exclusions.yaml
    config = yaml.safe_load(PAPER.read_text())
    missing = check_config(config, SCHEMA, ROOT)
    assert config["exclusions"] == str(ROOT / "config" / "exclusions.yaml")
    assert not any(p.startswith("exclusions:") for p in missing)
    assert any(p.startswith("datasets.caer.source.archives.0.path: /data/caer/") for p in missing)
    # without a checkout, relative paths are the working directory's
    missing = check_config(yaml.safe_load(PAPER.read_text()), SCHEMA)
    assert "exclusions: config/exclusions.yaml does not exist" in missing
    with pytest.raises(ConfigError, match="config names paths that do not exist"):
        load_checked(yaml.safe_load(PAPER.read_text()), SCHEMA)


def test_a_missing_input_refuses_only_the_jobs_that_read_it():
    missing = [
        "datasets.caer.source.archives.0.path: /data/caer/CAER.zip does not exist",
        "features.audio.weights: /data/w.pth does not exist",
        "subtitles.model: large-v3 is not in the cache (...)",
        "exclusions: /x/exclusions.yaml does not exist",
        "features.video3d.weights: /data/r3d.pth does not exist",
    ]
    assert needed_missing(missing, [("weights", {}), ("download", {"dataset": "meld"})]) == []
    assert needed_missing(missing, [("download", {"dataset": "caer"})]) == missing[:1]
    jobs = [("features", {"dataset": "meld", "role": "audio", "shard": "0"})]
    assert needed_missing(missing, jobs) == missing[1:2]
    jobs += [("features", {"dataset": "meld", "role": "text", "shard": "0"})]
    assert needed_missing(missing, jobs) == missing[1:2]
    # Both video backbones are read by the shard's one video job.
    jobs += [("features_video", {"dataset": "meld", "shard": "0"})]
    assert needed_missing(missing, jobs) == [missing[1], missing[4]]
    assert needed_missing(missing, [("subtitles", {}), ("manifest", {})]) == missing[2:4]


def test_a_partial_overlay_is_refused_with_the_command_that_reads_it(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    overlay = {"datasets": {"caer": {"source": {"archives": [{"path": "/d/CAER.zip"}]}}}}
    problem = overlay_problem(overlay, PAPER, [tmp_path / "my_paths.yaml"])
    assert problem.startswith(f"--configfile {tmp_path}/my_paths.yaml lacks the sections ")
    assert "faces, subtitles, features, pretrain, downstream" in problem
    assert f"`--configfile config/config.yaml {tmp_path}/my_paths.yaml`" in problem
    # whole configs: the demo, the paper config, an overlay read on top of the paper config
    assert overlay_problem(demo_config(), PAPER, [ROOT / "config" / "demo.yaml"]) is None
    both = {**yaml.safe_load(PAPER.read_text()), **overlay}
    assert overlay_problem(both, PAPER, [PAPER, tmp_path / "my_paths.yaml"]) is None


def test_localrules_name_the_workflow_s_rules():
    schema = yaml.safe_load(SCHEMA.read_text())
    names = set(schema["properties"]["localrules"]["items"]["enum"])
    proc = run_snakemake(["--configfile", str(ROOT / "config" / "demo.yaml"), "--list-rules"], ROOT)
    rules = {line.split()[0] for line in proc.stdout.splitlines() if line[:1].isalpha()}
    assert rules - {"all"} == names  # each line: a rule and its docstring
    config = demo_config()
    config["localrules"] = ["download", "tabels"]
    with pytest.raises(ConfigError, match=r"localrules\.1: 'tabels' is not one of"):
        validate(config, SCHEMA)


def paper_run(args: list[str], workdir, check: bool = False):
    """Snakemake on the paper config, in a working directory without any of its data; the
    process, with its log (stderr, or stdout under -n) as ``log``."""
    return logged(run_snakemake(["--configfile", str(PAPER), *args], workdir, check=check))


def logged(proc):
    proc.log = proc.stdout + proc.stderr
    return proc


@pytest.mark.parametrize(
    "args",
    [
        ["-n", "all"],
        ["--lint"],
        ["--list-rules"],
        ["--dag", "dot", "results/caer/manifest.parquet"],
    ],
)
def test_the_paper_config_plans_without_its_data(tmp_path, args):
    proc = paper_run(args, tmp_path)
    assert proc.returncode == 0, proc.log[-3000:]
    assert "planning goes on" in proc.log
    for line in (
        "datasets.voxceleb2.source.archives.0.path: /data/voxceleb2/vox2_dev_mp4_parta? "
        "matches no file",
        "datasets.caer.source.archives.0.path: /data/caer/CAER.zip does not exist",
        "features.audio.weights: /data/weights/RDVQ_00000/models/best_audio_model.pth "
        "does not exist",
    ):
        assert line in proc.log
    if args == ["--lint"]:
        assert "Congratulations, your workflow is in a good condition!" in proc.log
    assert not (tmp_path / "results").exists()


def test_a_run_without_its_data_is_refused_before_any_job(tmp_path):
    proc = paper_run(["--cores", "1", "results/caer/manifest.parquet"], tmp_path)
    assert proc.returncode != 0
    refusal = proc.log[proc.log.index("planning goes on") :]
    refusal = refusal[refusal.index("WorkflowError") :]
    assert "datasets.caer.source.archives.0.path: /data/caer/CAER.zip does not exist" in refusal
    assert "voxceleb2" not in refusal  # only what this run's jobs read
    assert not (tmp_path / "results").exists()
    # a dry run of the same targets only warns
    assert paper_run(["-n", "results/caer/manifest.parquet"], tmp_path).returncode == 0


def test_a_run_whose_jobs_read_none_of_the_missing_paths_goes_on(tmp_path):
    config = demo_config()
    config["datasets"]["caer"]["source"]["archives"] = [{"path": "nowhere/CAER.zip"}]
    config["exclusions"] = str(ROOT / "config" / "exclusions.yaml")
    cfg = tmp_path / "caer-missing.yaml"
    cfg.write_text(yaml.safe_dump(config))
    weights = "results/lookalike/weights/resnet18.pth"
    proc = logged(run_snakemake(["--configfile", str(cfg), "--cores", "1", weights], tmp_path))
    assert "datasets.caer.source.archives.0.path: nowhere/CAER.zip does not exist" in proc.log
    assert (tmp_path / weights).is_file()


def test_snakemake_refuses_a_partial_overlay_and_reads_it_on_the_paper_config(tmp_path):
    overlay = tmp_path / "my_paths.yaml"
    caer = tmp_path / "CAER.zip"
    caer.touch()
    overlay.write_text(
        yaml.safe_dump({"datasets": {"caer": {"source": {"archives": [{"path": str(caer)}]}}}})
    )
    proc = logged(run_snakemake(["--configfile", str(overlay), "-n"], tmp_path, check=False))
    assert proc.returncode != 0
    assert "my_paths.yaml lacks the sections max_failure_fraction, exclusions," in proc.log
    assert f"`--configfile {PAPER} my_paths.yaml`" in proc.log
    proc = paper_run([str(overlay), "-n", "results/caer/manifest.parquet"], tmp_path, check=True)
    assert "datasets.caer" not in proc.log  # the overlay's CAER.zip is there
    assert "datasets.voxceleb2.source.archives.0.path" in proc.log  # the paper's sections
    assert "rule download:" in proc.log and "rule manifest:" in proc.log
