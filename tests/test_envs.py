"""The conda environments in envs/ pin the same versions as the venv (requirements.txt)."""

import re

import yaml

from tests.conftest import ROOT


def pins(lines):
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s#;]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_env_pins_agree_with_requirements():
    wanted = pins((ROOT / "requirements.txt").read_text().splitlines())
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        deps = yaml.safe_load(env.read_text())["dependencies"]
        pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
        for name, version in pins(pip).items():
            assert name in wanted, f"{env.name}: {name} is not pinned in requirements.txt"
            assert version == wanted[name], f"{env.name}: {name}=={version} != {wanted[name]}"
