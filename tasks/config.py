"""params.yaml -> typed, validated stage configs.

Each stage reads exactly one section; `dvc.yaml` lists that section as the stage's params,
so changing a key reruns only the stages that read it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.errors import PipelineError

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(PipelineError):
    """A parameter is missing, malformed or out of range; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Share = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


class DownloadConfig(Section):
    """How a source archive is fetched: URL (http(s)://, file:// or a path) and its checksum."""

    url: str
    sha256: str | None = None
    cache_dir: str = ".cache/downloads"
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    attempts: PositiveInt = 4

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("must be 64 hex characters (a sha256 digest) or null")
        return value


class ExtractLimits(Section):
    """Bounds that stop a hostile or broken archive from filling the disk."""

    max_members: PositiveInt = 20_000
    max_member_bytes: PositiveInt = 200_000_000
    max_total_bytes: PositiveInt = 20_000_000_000


class StoreConfig(Section):
    out_dir: str
    shard_rows: PositiveInt = 500
    max_failure_share: Share = 0.05
    metrics_file: str


RavdessEmotion = Literal["neutral", "calm", "happy", "sad", "angry", "fearful"]


class AcquireRavdessConfig(Section):
    download: DownloadConfig
    extract: ExtractLimits = ExtractLimits()
    store: StoreConfig
    emotions: list[RavdessEmotion] = Field(min_length=1)
    vocal_channel: Literal["song", "speech"] = "song"


class AcquireCal500Config(Section):
    download: DownloadConfig
    extract: ExtractLimits = ExtractLimits()
    store: StoreConfig
    # label -> CAL500 tags that assert it, per training vocabulary.
    vocabularies: dict[str, dict[str, list[str]]] = Field(min_length=1)
    filter_vocabulary: str
    # ignore: NOT-Emotion-X is not consulted; veto: a label is dropped when the NOT tag of
    # any of its Emotion tags is also positive for the song.
    not_emotion_rule: Literal["ignore", "veto"] = "veto"
    # any: keep songs with at least one label; single: only songs with exactly one.
    keep: Literal["any", "single"] = "any"
    annotation: Literal["hard", "soft"] = "hard"
    soft_threshold: Share = 0.5

    @field_validator("filter_vocabulary")
    @classmethod
    def _known_vocabulary(cls, value: str, info: Any) -> str:
        vocabularies = info.data.get("vocabularies") or {}
        if vocabularies and value not in vocabularies:
            raise ValueError(f"{value!r} is not one of the vocabularies {sorted(vocabularies)}")
        return value


SECTIONS: dict[str, type[Section]] = {
    "acquire_ravdess": AcquireRavdessConfig,
    "acquire_cal500": AcquireCal500Config,
}


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` as `dvc exp run -S` takes it: the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


def apply_overrides(params: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    merged = copy.deepcopy(params)
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a mapping")
            node = child
        node[path[-1]] = value
    return merged


def load_params(path: Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> dict[str, Any]:
    try:
        params = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"params file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ConfigError(f"params file {path} must hold a mapping of sections")
    return apply_overrides(params, overrides or [])


def _format_errors(section: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join([section, *(str(p) for p in err["loc"])])
        got = f" (got {err['input']!r})" if err["type"] not in {"missing"} else ""
        lines.append(f"{key}: {err['msg']}{got}")
    return "invalid parameters:\n  " + "\n  ".join(lines)


def section_config(params: dict[str, Any], section: str) -> Section:
    """Validate one section; every problem is reported with its full dotted key."""
    model = SECTIONS.get(section)
    if model is None:
        raise ConfigError(f"unknown params section {section!r}; known: {sorted(SECTIONS)}")
    if section not in params:
        raise ConfigError(f"{section}: section missing from params")
    try:
        return model.model_validate(params[section])
    except ValidationError as exc:
        raise ConfigError(_format_errors(section, exc)) from None
