"""params.yaml -> typed, validated stage configs.

Each stage reads exactly one section; `dvc.yaml` lists that section as the stage's params,
so changing a key reruns only the stages that read it.
"""

from __future__ import annotations

import copy
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.errors import PipelineError

DEFAULT_PARAMS = Path("params.yaml")
PARTITION_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


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


class FrontEndConfig(Section):
    """Log-magnitude spectrogram front end; the defaults are VGGish's (Hershey et al. 2017)."""

    sample_rate: PositiveInt = 16000
    win_length: PositiveInt = 400  # 25 ms periodic Hann window
    hop_length: PositiveInt = 160  # 10 ms
    n_fft: PositiveInt = 512
    n_bands: PositiveInt = 64
    # mel: librosa's HTK-formula triangles (linear in Hz); vggish: VGGish's own mel_features bank (linear in
    # mel, DC bin dropped); linear: evenly spaced triangles
    scale: Literal["mel", "vggish", "linear"] = "mel"
    fmin: Annotated[float, Field(ge=0)] = 125.0
    fmax: Annotated[float, Field(gt=0)] = 7500.0
    log_offset: Annotated[float, Field(gt=0)] = 0.01  # log(spectrogram + offset)

    @model_validator(mode="after")
    def _consistent(self) -> FrontEndConfig:
        if self.win_length > self.n_fft or (self.n_fft - self.win_length) % 2:
            raise ValueError(f"win_length {self.win_length} must be <= n_fft {self.n_fft}, with an even difference")
        if not self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need fmin < fmax <= sample_rate / 2, got {self.fmin}, {self.fmax}, {self.sample_rate}")
        return self


class AudioChecks(Section):
    """What counts as unusable audio; such clips go to the failures table with the reason."""

    min_seconds: Annotated[float, Field(ge=0)] = 0.0
    silence_peak: Share = 0.001  # peak |sample| below this: silent
    clip_level: Share = 0.999  # |sample| at or above this counts as clipped
    max_clipped_share: Share = 0.01


class FeatureStoreConfig(Section):
    raw_dir: str = "data/raw"  # holds one raw clip store per dataset
    out_dir: str
    metrics_file: str
    rows_per_file: PositiveInt = 2000
    max_failure_share: Share = 0.05


Device = Literal["auto", "cpu", "cuda"]


class FeaturesSlicesConfig(Section):
    """Square log-spectrogram slices of whole clips and songs (the spectrogram study)."""

    datasets: list[str] = Field(min_length=1)
    # Split of every clip of a dataset whose store has no split column.
    default_splits: dict[str, str] = {}
    store: FeatureStoreConfig
    checks: AudioChecks = AudioChecks()
    frontend: FrontEndConfig
    slice_seconds: Annotated[float, Field(gt=0)] = 4.0
    overlap: Annotated[float, Field(ge=0, lt=1)] = 0.0  # share of a slice the next one repeats
    tail: Literal["pad", "align_end"] = "pad"
    vocal_isolation: bool = False
    dtype: Literal["float16", "float32"] = "float16"
    device: Device = "cpu"

    @model_validator(mode="after")
    def _square_and_gapless(self) -> FeaturesSlicesConfig:
        fe = self.frontend
        samples = self.slice_seconds * fe.sample_rate
        if abs(samples - fe.n_bands * fe.hop_length) > 1e-6:
            raise ValueError(
                f"a square slice needs slice_seconds * sample_rate = n_bands * hop_length, got {samples:g} != "
                f"{fe.n_bands} * {fe.hop_length}; e.g. frontend.hop_length={samples / fe.n_bands:g}"
            )
        if fe.win_length < fe.hop_length:
            raise ValueError(f"frontend.win_length {fe.win_length} < hop_length {fe.hop_length} would skip audio")
        return self


class FeaturesVggishConfig(Section):
    """VGGish embeddings, 128-d per 0.96 s example (the AudioSet study)."""

    datasets: list[str] = Field(min_length=1)
    default_splits: dict[str, str] = {}
    store: FeatureStoreConfig
    checks: AudioChecks = AudioChecks()
    frontend: FrontEndConfig = FrontEndConfig()
    example_hop_frames: PositiveInt = 96  # 96: non-overlapping examples, as published
    # torchvggish state dicts; null = none (only with allow_random_weights).
    weights: DownloadConfig | None
    pca_params: DownloadConfig | None
    allow_random_weights: bool = False
    seed: int = 0
    pca: bool = True
    clip_range: tuple[float, float] | None = (-2.0, 2.0)
    quantize: bool = True  # 8 bits over clip_range
    batch_size: PositiveInt = 64
    device: Device = "auto"
    precision: Literal["float32", "bfloat16"] = "float32"

    @model_validator(mode="after")
    def _usable(self) -> FeaturesVggishConfig:
        if self.frontend.n_bands != 64:
            raise ValueError(f"VGGish takes 64 bands, frontend.n_bands is {self.frontend.n_bands}")
        if not self.allow_random_weights and (self.weights is None or (self.pca and self.pca_params is None)):
            raise ValueError("weights or pca_params is null: set the published torchvggish files (path or URL), "
                             "or allow_random_weights: true for seeded random weights (recorded in the dataset)")
        if self.clip_range is not None and self.clip_range[0] >= self.clip_range[1]:
            raise ValueError(f"clip_range {self.clip_range} must be (low, high) with low < high")
        if self.quantize and self.clip_range is None:
            raise ValueError("quantize needs clip_range: 8 bits span the clipped range")
        return self


Split = Literal["train", "test"]


class SelectAudiosetConfig(Section):
    """Which AudioSet segments to download: classes by ontology display name, quotas, disjoint splits."""

    ontology: DownloadConfig
    # Official segment CSVs by name; train_from / test_from say which feed each split.
    segments: dict[str, DownloadConfig] = Field(min_length=1)
    train_from: list[str] = Field(min_length=1)
    test_from: list[str] = Field(min_length=1)
    # segments: draw from the official CSVs; clip_lists: ready lists in the mood study's format.
    source: Literal["segments", "clip_lists"] = "segments"
    clip_lists: dict[Split, DownloadConfig] = {}
    classes: list[str] = Field(min_length=1)
    # A segment carrying two or more of the selected classes: drop it, or keep it with all its labels.
    multi_label: Literal["drop", "keep"] = "drop"
    quota: dict[Split, PositiveInt | None] = {"train": None, "test": None}  # per class; null: all
    seed: int = 0
    out: str
    metrics_file: str

    @model_validator(mode="after")
    def _sources_exist(self) -> SelectAudiosetConfig:
        for key in ("train_from", "test_from"):
            unknown = sorted(set(getattr(self, key)) - set(self.segments))
            if unknown:
                raise ValueError(f"{key} names {unknown}, which are not among segments {sorted(self.segments)}")
        if self.source == "clip_lists" and set(self.clip_lists) != {"train", "test"}:
            raise ValueError("source clip_lists needs clip_lists.train and clip_lists.test")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes lists a name twice: {self.classes}")
        return self


class StopLossConfig(Section):
    """Persistent rate limiting pauses a shard instead of burning through its list."""

    after: PositiveInt = 5  # consecutive rate-limited or bot-checked attempts
    pause_s: Annotated[float, Field(ge=0)] = 900.0
    max_pauses: Annotated[int, Field(ge=0)] = 2  # then the shard stops; a rerun resumes it


class CredentialsConfig(Section):
    """Where the optional cookies file and proxy come from; the values themselves never enter params."""

    cookies_env: str = "AUDIOSET_COOKIES_FILE"
    proxy_env: str = "AUDIOSET_PROXY"
    airflow_conn_id: str = "audioset_youtube"  # extras: cookies_file, proxy


class AcquireAudiosetConfig(Section):
    selection: str
    url_template: str = "https://www.youtube.com/watch?v={ytid}"
    sample_rate: PositiveInt = 16000
    channels: Literal[1, 2] = 1
    concurrency: PositiveInt = 4  # downloads in flight per shard task
    max_requests_per_hour: Annotated[float, Field(gt=0)] = 300.0  # one budget for every worker on the state DB
    burst: PositiveInt = 5  # requests that may start at once after an idle spell
    jitter_s: Annotated[float, Field(ge=0)] = 2.0  # random wait before each request, so starts never look clocked
    attempts: PositiveInt = 4  # per clip and run, for transient failures
    backoff_s: Annotated[float, Field(ge=0)] = 10.0
    max_backoff_s: Annotated[float, Field(ge=0)] = 600.0
    socket_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    stop_loss: StopLossConfig = StopLossConfig()
    duration_tolerance_s: Annotated[float, Field(ge=0)] = 0.5
    silence_dbfs: float = -60.0  # RMS below this: silent
    state_dir: str = ".cache/audioset"  # every fetched clip, remembered failures, the shared request budget
    credentials: CredentialsConfig = CredentialsConfig()
    seed: int = 0  # jitter draws
    store: StoreConfig

    @field_validator("url_template")
    @classmethod
    def _ytid_placeholder(cls, value: str) -> str:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        if fields != {"ytid"}:
            raise ValueError(f"must contain {{ytid}} and no other placeholder, got {sorted(fields) or 'none'}")
        return value



SLICE_ARCHS = ("resnet50", "resnet152", "vgg11", "vgg19", "googlenet", "small_cnn", "logreg_stats")
EMBEDDING_ARCHS = ("logreg", "lstm1", "lstm3")
# study -> (the feature dataset its models read, its architectures)
STUDIES = {"spectrogram": ("slices", SLICE_ARCHS), "audioset": ("vggish", EMBEDDING_ARCHS)}
Study = Literal["spectrogram", "audioset"]


class ArchConfig(Section):
    """Hyperparameters of one architecture (the spectrogram study's Table 1 for its nets)."""

    lr: Annotated[float, Field(gt=0)] = 1e-3
    batch_size: PositiveInt = 32
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    gamma: Annotated[float, Field(gt=0, le=1)] = 1.0  # StepLR factor every step_epochs
    step_epochs: PositiveInt = 10
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: Share = 0.9
    epochs: PositiveInt = 100
    patience: PositiveInt = 10  # epochs without a lower validation loss before stopping
    hidden: PositiveInt = 128  # LSTM hidden size
    dropout: Share = 0.0
    C: Annotated[float, Field(gt=0)] = 1.0  # logreg_stats: inverse regularisation strength
    weights: DownloadConfig | None = None  # pretrained state dict (e.g. ImageNet); null: random init


class SplitConfig(Section):
    """Grouped train/validation split: a clip's slices, and a singer's clips, stay on one side.

    random: val_share of the clips at random (the study's 50/50, 80/20, 90/10 by clip);
    actors: the clips of test_actors are the validation side (speaker-independent RAVDESS);
    actor_folds: fold `fold` of k folds by actor; stratified_folds: fold `fold` of k
    label-stratified folds by clip (the AudioSet study's 400 clips).
    inner_share of the training clips (by clip) choose the epoch and the search's best set, so the
    validation side only reports; 0 chooses on the validation side itself, as the study did, which
    makes its score optimistic.
    """

    kind: Literal["random", "actors", "actor_folds", "stratified_folds"] = "random"
    val_share: Annotated[float, Field(gt=0, lt=1)] = 0.2
    test_actors: list[int] = []
    k: Annotated[int, Field(ge=2)] = 5
    fold: Annotated[int, Field(ge=0)] = 0
    seed: int = 0  # draws the random splits and folds; the model's own seed leaves the split alone
    inner_share: Annotated[float, Field(ge=0, lt=1)] = 0.15

    @model_validator(mode="after")
    def _complete(self) -> SplitConfig:
        if self.kind == "actors" and not self.test_actors:
            raise ValueError("kind 'actors' needs test_actors, e.g. [19, 20]")
        if self.kind.endswith("folds") and self.fold >= self.k:
            raise ValueError(f"fold {self.fold} is not below k {self.k}")
        return self


class ModelEntry(Section):
    """One cell of the model matrix: architecture x data x split x seed."""

    arch: Literal[SLICE_ARCHS + EMBEDDING_ARCHS]  # type: ignore[valid-type]
    dataset: str  # partition of the feature dataset; names its label vocabulary
    split: SplitConfig = SplitConfig()
    seed: int = 0  # initialisation, shuffling, augmentation, dropout
    overrides: dict[str, Any] = {}  # keys of ArchConfig for this cell only


class AugmentConfig(Section):
    """Batch augmentation of log-mel slices; 0 turns each off."""

    brightness: Annotated[float, Field(ge=0)] = 0.0  # add U(-b, b) to the log-mel image (a gain)
    contrast: Share = 0.0  # scale around the image mean by U(1 - c, 1 + c)
    time_masks: Annotated[int, Field(ge=0)] = 0  # SpecAugment masks per image
    time_mask_frames: Annotated[int, Field(ge=0)] = 0  # widest mask
    freq_masks: Annotated[int, Field(ge=0)] = 0
    freq_mask_bands: Annotated[int, Field(ge=0)] = 0
    mixup_alpha: Annotated[float, Field(ge=0)] = 0.0  # Beta(a, a) mixing of images and targets


class SearchConfig(Section):
    """Optuna search: `trials` seeded parameter sets, each a nested MLflow run; 0 trains the defaults."""

    trials: Annotated[int, Field(ge=0)] = 0
    sampler: Literal["random", "tpe"] = "random"
    seed: int = 0
    # name -> [low, high] (log-uniform for lr and weight_decay, uniform otherwise) or a list of choices
    space: dict[str, list[Any]] = {}


class TrainCommonConfig(Section):
    features: dict[Literal["slices", "vggish"], str]  # feature dataset directories
    vocabularies: dict[str, list[str]] = Field(min_length=1)  # dataset -> label list, in output order
    tracking_uri: str = "http://127.0.0.1:5000"  # $MLFLOW_TRACKING_URI wins
    register_models: bool = True
    registry_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] = "mood"  # <prefix>-<study>-<arch>
    device: Device = "auto"
    models_dir: str = "models"
    metrics_dir: str = "metrics"
    plots_dir: str = "plots/curves"
    checkpoint_dir: str = ".cache/train"  # per-epoch checkpoints, outside DVC outputs, for retries
    gpu_lock_dir: str = ".cache/gpu-locks"
    min_real_share: Share = 0.0  # slices with less real audio are dropped from training
    vote_weighting: Literal["real_share", "equal"] = "real_share"
    sequence_length: PositiveInt = 10  # VGGish examples per clip (10 x 0.96 s)
    augment: AugmentConfig = AugmentConfig()
    search: SearchConfig = SearchConfig()


class TrainConfig(Section):
    """The model matrix per study (train.models.<study>.<name>), architecture defaults, common settings."""

    common: TrainCommonConfig
    architectures: dict[str, ArchConfig]
    models: dict[Study, dict[str, ModelEntry]]

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        seen: set[str] = set()
        for study, entries in self.models.items():
            for name, entry in entries.items():
                key = f"models.{study}.{name}"
                if not PARTITION_NAME.match(name) or name in seen:
                    raise ValueError(f"{key}: a model name must be unique and letters, digits, _ or -")
                seen.add(name)
                if entry.arch not in STUDIES[study][1]:
                    raise ValueError(f"{key}.arch {entry.arch!r} is not an architecture of the {study} study "
                                     f"{list(STUDIES[study][1])}")  # fmt: skip
                if entry.arch not in self.architectures:
                    raise ValueError(f"{key}.arch {entry.arch!r} has no entry under architectures")
                if entry.dataset not in self.common.vocabularies:
                    raise ValueError(f"{key}.dataset {entry.dataset!r} has no label list under "
                                     f"common.vocabularies ({sorted(self.common.vocabularies)})")
                unknown = set(entry.overrides) - set(ArchConfig.model_fields)
                if unknown:
                    raise ValueError(f"{key}.overrides: unknown keys {sorted(unknown)}")
        return self

    def arch_config(self, entry: ModelEntry) -> ArchConfig:
        base = self.architectures[entry.arch].model_dump()
        return ArchConfig.model_validate({**base, **entry.overrides})


class BootstrapConfig(Section):
    resamples: Annotated[int, Field(ge=100)] = 1000
    seed: int = 0


class EvaluateConfig(Section):
    """Song-level evaluation of the trained models (models/<name>/) on every partition of their feature dataset."""

    models_dir: str = "models"
    features: dict[Literal["slices", "vggish"], str]
    raw_dir: str = "data/raw"  # raw clip stores: CAL500's annotations, and the audio of the excerpts
    reports_dir: str = "reports/models"  # reports/models/<name>/: report.html, predictions, matrices
    summary_dir: str = "reports/summary"  # the studies' tables and the cross-dataset matrix
    metrics_dir: str = "metrics"
    plots_dir: str = "plots/confusion"  # <name>.csv (actual, predicted) for `dvc plots` confusion templates
    tracking_uri: str = "http://127.0.0.1:5000"  # $MLFLOW_TRACKING_URI wins
    experiment: str = "mood-evaluation"
    device: Device = "auto"
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.6  # threshold voting: the label's least share of votes
    curve_step: Annotated[float, Field(gt=0, le=0.5)] = 0.05  # coverage-accuracy curve thresholds
    bootstrap: BootstrapConfig = BootstrapConfig()
    worst_songs: Annotated[int, Field(ge=0)] = 5  # per test set, with their slice votes and an excerpt
    excerpt_seconds: Annotated[float, Field(gt=0, le=30)] = 5.0
    # test dataset -> model dataset -> {test label: model label}; equal names match without an entry.
    # CAL500 needs none: its store holds labels per training vocabulary (acquire_cal500.vocabularies).
    label_map: dict[str, dict[str, dict[str, str]]] = {}


class PredictConfig(Section):
    """The mood of any audio file: the CLI (`python -m tasks predict`), the batch DAG and the served model.

    The features are never set here: they come from the model's card (the settings it learned from)."""

    model: str = "models:/mood-spectrogram-small-cnn@champion"  # any MLflow model URI, or a models/<name> folder
    tracking_uri: str = "http://127.0.0.1:5000"  # $MLFLOW_TRACKING_URI wins
    voting: Literal["majority", "soft", "threshold"] = "majority"
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.6  # threshold voting: the label's least share of votes
    # Shortest file predicted; null: one slice (spectrogram models) or one 0.96 s example (VGGish models).
    min_seconds: Annotated[float, Field(ge=0)] | None = None
    max_file_mb: Annotated[float, Field(gt=0)] = 200.0  # larger files (and URL downloads) are refused
    max_seconds: Annotated[float, Field(gt=0)] = 1800.0  # longer audio is refused: ~40 MB a minute while decoded
    url_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    device: Device = "cpu"
    chunk_files: PositiveInt = 50  # batch DAG: files per mapped task
    raw_dir: str = "data/raw"  # batch DAG: raw clip stores a run may name instead of a folder
    out_dir: str = "data/predictions"  # batch DAG: <out_dir>/<run id>/predictions.parquet


SECTIONS: dict[str, type[Section]] = {
    "acquire_ravdess": AcquireRavdessConfig,
    "acquire_cal500": AcquireCal500Config,
    "features_slices": FeaturesSlicesConfig,
    "features_vggish": FeaturesVggishConfig,
    "select_audioset": SelectAudiosetConfig,
    "acquire_audioset": AcquireAudiosetConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "predict": PredictConfig,
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
