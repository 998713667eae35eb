import subprocess
import sys

import pytest

from tasks.cli import STAGES, main
from tasks.config import ConfigError, apply_overrides, load_params, parse_override, section_config

from .conftest import PROJECT


def test_every_section_of_params_yaml_validates(params: dict) -> None:
    for stage in STAGES.values():
        section_config(params, stage.section)


def test_override_parses_values_as_yaml_like_dvc() -> None:
    assert parse_override("a.b.c=12") == (["a", "b", "c"], 12)
    assert parse_override("a=[x, y]") == (["a"], ["x", "y"])
    assert parse_override("a.url=http://h:1/p?x=1") == (["a", "url"], "http://h:1/p?x=1")
    merged = apply_overrides({"a": {"b": 1, "keep": 2}}, ["a.b=3", "new.key=null"])
    assert merged == {"a": {"b": 3, "keep": 2}, "new": {"key": None}}


def test_bad_value_names_the_full_key(params: dict) -> None:
    bad = apply_overrides(params, ["acquire_ravdess.store.shard_rows=-1"])
    with pytest.raises(ConfigError, match=r"acquire_ravdess\.store\.shard_rows: .*greater than 0.*-1"):
        section_config(bad, "acquire_ravdess")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("acquire_ravdess.emotions=[joyful]", r"acquire_ravdess\.emotions\.0"),
        ("acquire_ravdess.store.typo=1", r"acquire_ravdess\.store\.typo: Extra inputs"),
        ("acquire_ravdess.download.sha256=abc", r"acquire_ravdess\.download\.sha256"),
        ("acquire_cal500.filter_vocabulary=klingon", r"acquire_cal500\.filter_vocabulary"),
        ("acquire_cal500.store.max_failure_share=1.5", r"acquire_cal500\.store\.max_failure_share"),
    ],
)
def test_invalid_values_are_rejected(params: dict, override: str, key: str) -> None:
    section = override.split(".")[0]
    with pytest.raises(ConfigError, match=key):
        section_config(apply_overrides(params, [override]), section)


def test_malformed_inputs(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not of the form"):
        parse_override("no-equals-sign")
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_cli_help_lists_every_stage() -> None:
    out = subprocess.run([sys.executable, "-m", "tasks", "--help"], capture_output=True, text=True, check=True).stdout
    for name in STAGES:
        assert name in out
    tooling = subprocess.run([sys.executable, "-m", "devtools", "mirror", "--help"], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    assert "serve" in tooling and "build" in tooling


def test_cli_reports_bad_params_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["acquire_ravdess", "--root", str(PROJECT), "-S", "acquire_ravdess.store.shard_rows=zero"])
    err = capsys.readouterr().err
    assert code == 2
    assert "acquire_ravdess.store.shard_rows" in err and "Traceback" not in err
