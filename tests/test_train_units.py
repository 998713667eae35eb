"""Training pieces without services: splits, bad input, architectures, weights, augmentation, voting, GPU claims."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.config import ArchConfig, AugmentConfig, ConfigError, DownloadConfig, SplitConfig, section_config
from tasks.train.augment import augment_batch
from tasks.train.data import TrainDataError, load_clips, split_clips
from tasks.train.gpu import claim_gpu
from tasks.train.loop import vote
from tasks.train.models import MoodNet, build_net, load_pretrained, logits_of, training_loss

from .features_fixture import write_slices

CLASSES = ["calm", "happy", "sad"]


def corpus(actors: int = 5, per_actor: int = 6) -> list[tuple[str, str, int]]:
    return [(f"a{a:02d}-{i:02d}", CLASSES[i % 3], a) for a in range(1, actors + 1) for i in range(per_actor)]


@pytest.fixture
def slices(tmp_path: Path) -> Path:
    return write_slices(tmp_path / "slices", corpus())


SPLITS = [
    SplitConfig(kind="random", val_share=0.5),
    SplitConfig(kind="random", val_share=0.2),
    SplitConfig(kind="random", val_share=0.1),
    SplitConfig(kind="actors", test_actors=[2, 4]),
    *(SplitConfig(kind="actor_folds", k=5, fold=f) for f in range(5)),
    *(SplitConfig(kind="stratified_folds", k=3, fold=f) for f in range(3)),
]


@pytest.mark.parametrize("cfg", SPLITS, ids=lambda c: f"{c.kind}-{c.val_share}-{c.fold}")
def test_no_clip_or_slice_is_on_both_sides(slices: Path, cfg: SplitConfig) -> None:
    data = load_clips(slices, "slices", "ravdess", CLASSES, 10)
    split = split_clips(data, cfg, what="test")
    sides = [split.train, split.inner, split.val]
    assert all(not set(a) & set(b) for i, a in enumerate(sides) for b in sides[i + 1:])
    assert sorted(np.concatenate(sides).tolist()) == list(range(data.n_clips)) and len(split.inner) > 0
    train_rows, val_rows = data.rows_of(split.learn), data.rows_of(split.val)
    assert not set(train_rows) & set(val_rows) and len(train_rows) + len(val_rows) == len(data.inputs)
    train_ids = {data.clip_ids[data.row_clip[r]] for r in train_rows}
    assert train_ids.isdisjoint(data.clip_ids[data.row_clip[r]] for r in val_rows)
    if cfg.kind.startswith("actor"):
        assert set(data.clip_actor[split.learn]).isdisjoint(data.clip_actor[split.val])


def test_actor_folds_cover_every_actor_once(slices: Path) -> None:
    data = load_clips(slices, "slices", "ravdess", CLASSES, 10)
    held = [set(data.clip_actor[split_clips(data, SplitConfig(kind="actor_folds", k=5, fold=f), "t").val])
            for f in range(5)]  # fmt: skip
    assert sorted(a for h in held for a in h) == [1, 2, 3, 4, 5]


def test_real_share_comes_from_sample_bounds(slices: Path) -> None:
    data = load_clips(slices, "slices", "ravdess", CLASSES, 10)
    assert data.inputs.shape[1:] == (1, 16, 16)
    assert sorted(set(np.round(data.real_share, 3))) == [0.3, 1.0]


@pytest.mark.parametrize(
    ("clips", "classes", "split", "message"),
    [
        ([("x1", "surprised", 1), *corpus(2)], CLASSES, SplitConfig(), "clip x1 has label 'surprised', which is not "
         "in train.common.vocabularies.ravdess ['calm', 'happy', 'sad']"),
        ([(f"c{i}", "sad", i) for i in range(6)], CLASSES, SplitConfig(), "the training side holds one class only "
         "(['sad'])"),
        (corpus(2), CLASSES, SplitConfig(kind="actor_folds", k=5), "5 folds by actor need at least 5 actors, the "
         "data has 2"),
        (corpus(2), CLASSES, SplitConfig(kind="actors", test_actors=[7]), "actors [7] have no clips (actors "
         "present: [1, 2])"),
        (corpus(2), CLASSES, SplitConfig(kind="actors", test_actors=[1, 2]), "the training side of the split is "
         "empty"),
    ],
    ids=["unknown-label", "one-class", "too-few-actors", "absent-actor", "empty-side"],
)
def test_bad_training_data_is_a_clear_error(tmp_path: Path, clips: list, classes: list[str], split: SplitConfig,
                                            message: str) -> None:  # fmt: skip
    root = write_slices(tmp_path / "slices", clips)
    with pytest.raises(TrainDataError) as err:
        split_clips(load_clips(root, "slices", "ravdess", classes, 10), split, "train.models.m")
    assert message in str(err.value)


def test_missing_or_empty_features_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(TrainDataError, match=r"no feature dataset at .*: run the features_slices stage first"):
        load_clips(tmp_path / "nothing", "slices", "ravdess", CLASSES, 10)
    root = write_slices(tmp_path / "slices", corpus(2))
    with pytest.raises(TrainDataError, match="holds no rows for dataset=cal500 split=train"):
        load_clips(root, "slices", "cal500", CLASSES, 10)


def test_model_matrix_errors_name_the_key(params: dict) -> None:
    models = params["train"]["models"]
    models["spectrogram"]["bad"] = {"arch": "resnet18", "dataset": "ravdess"}
    with pytest.raises(ConfigError, match=r"train\.models\.spectrogram\.bad\.arch: Input should be 'resnet50'"):
        section_config(params, "train")
    models["spectrogram"]["bad"] = {"arch": "small_cnn", "dataset": "gtzan"}
    with pytest.raises(ConfigError, match=r"models\.spectrogram\.bad\.dataset 'gtzan' has no label list"):
        section_config(params, "train")
    models["spectrogram"]["bad"] = {"arch": "lstm1", "dataset": "ravdess"}
    with pytest.raises(ConfigError, match=r"models\.spectrogram\.bad\.arch 'lstm1' is not an architecture of the "
                                          r"spectrogram study"):  # fmt: skip
        section_config(params, "train")


@pytest.mark.parametrize("arch", ["resnet50", "resnet152", "vgg11", "vgg19", "googlenet", "small_cnn"])
def test_study_nets_take_one_channel_slices(arch: str) -> None:
    torch.manual_seed(0)
    model = MoodNet(build_net(arch, 6, ArchConfig(), 10), 0.0, 1.0, sequence=False)
    x = torch.randn(2, 1, 128, 128)
    model.train()
    out = model(x)
    target = torch.nn.functional.one_hot(torch.tensor([0, 5]), 6).float()
    loss = training_loss(out, target, torch.nn.CrossEntropyLoss())
    if arch == "googlenet":  # main + 0.3 x each auxiliary head
        main, aux2, aux1 = out
        ce = torch.nn.CrossEntropyLoss()
        assert torch.isclose(loss, ce(main, target) + 0.3 * (ce(aux1, target) + ce(aux2, target)))
        model.drop_auxiliary_heads()
        assert model.net.aux1 is None and model.net.aux2 is None
    loss.backward()
    model.eval()
    assert logits_of(model(x)).shape == (2, 6)


@pytest.mark.parametrize("arch", ["logreg", "lstm1", "lstm3"])
def test_sequence_models_ignore_padding_steps(arch: str) -> None:
    torch.manual_seed(0)
    model = MoodNet(build_net(arch, 4, ArchConfig(hidden=8), 10), 0.0, 1.0, sequence=True).eval()
    x = torch.randn(3, 10, 128)
    x[0, 6:] = 0
    with torch.no_grad():
        inferred = model(x)
        given = model(x, torch.tensor([6, 10, 10]))
    assert inferred.shape == (3, 4) and torch.allclose(inferred, given)


def test_pretrained_rgb_weights_fold_into_one_channel(tmp_path: Path) -> None:
    import hashlib

    import torchvision

    rgb = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path / "resnet50-test.pth"
    torch.save(rgb, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    net = build_net("resnet50", 6, ArchConfig(), 10)
    kind = load_pretrained(net, ArchConfig(weights=DownloadConfig(url=str(path), sha256=sha)), tmp_path)
    assert kind == "pretrained:resnet50-test.pth"
    assert torch.equal(net.conv1.weight, rgb["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(net.layer4[2].conv3.weight, rgb["layer4.2.conv3.weight"])
    assert net.fc.out_features == 6  # the classifier keeps its own shape and initialisation
    assert load_pretrained(net, ArchConfig(), tmp_path) == "random-init"


def test_augmentation_is_seeded_and_mixup_keeps_targets_distributions() -> None:
    cfg = AugmentConfig(brightness=0.5, contrast=0.2, time_masks=2, time_mask_frames=8, freq_masks=2,
                        freq_mask_bands=8, mixup_alpha=0.4)  # fmt: skip
    x = torch.randn(8, 1, 32, 32)
    target = torch.nn.functional.one_hot(torch.arange(8) % 3, 3).float()
    a = augment_batch(x, target, cfg, torch.Generator().manual_seed(1))
    b = augment_batch(x, target, cfg, torch.Generator().manual_seed(1))
    c = augment_batch(x, target, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    assert torch.allclose(a[1].sum(1), torch.ones(8)) and not torch.equal(a[1], target)
    plain = augment_batch(x, target, AugmentConfig(), torch.Generator().manual_seed(1))
    assert torch.equal(plain[0], x) and torch.equal(plain[1], target)


def test_vote_weighs_slices_and_breaks_ties_by_probability() -> None:
    prob = np.array([[0.6, 0.4], [0.45, 0.55], [0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    row_clip = np.array([0, 0, 1, 1, 1])
    # clip 0: one vote each -> tie, summed probability favours class 0 (1.05 vs 0.95)
    _, pred = vote(prob, row_clip, np.ones(5))
    assert pred.tolist() == [0, 1]
    # weighting by real audio: clip 1's first slice is whole, the others mostly padding
    _, pred = vote(prob, row_clip, np.array([1, 1, 1.0, 0.2, 0.2]))
    assert pred.tolist() == [0, 0]


def test_each_task_claims_its_own_gpu(tmp_path: Path) -> None:
    with claim_gpu(tmp_path, ["0", "1"]) as first, claim_gpu(tmp_path, ["0", "1"]) as second:
        assert {first, second} == {"0", "1"}
        with pytest.raises(TimeoutError, match=r"no free GPU among \['0', '1'\]"), \
                claim_gpu(tmp_path, ["0", "1"], timeout_s=0):  # fmt: skip
            pass
    with claim_gpu(tmp_path, ["0", "1"]) as again:  # released at the end of the block
        assert again == "0"
    with claim_gpu(tmp_path, []) as none:
        assert none is None


def test_the_inner_clips_choose_the_epoch_and_validation_only_reports(slices: Path, tmp_path: Path) -> None:
    from tasks.train.loop import Checkpoint, fit

    data = load_clips(slices, "slices", "ravdess", CLASSES, 10)
    split = split_clips(data, SplitConfig(kind="actor_folds", k=5, fold=0, inner_share=0.3), "t")
    # Mislabel the validation side: its loss now rises while the inner loss falls, so the two disagree.
    data.clip_label[split.val] = (data.clip_label[split.val] + 1) % 3
    torch.manual_seed(0)
    model = MoodNet(build_net("small_cnn", 3, ArchConfig(), 10), 0.0, 1.0, sequence=False)
    cfg = ArchConfig(optimizer="adam", lr=0.01, batch_size=8, epochs=6, patience=6)
    result = fit(model, data, split, cfg, AugmentConfig(), 0, torch.device("cpu"), Checkpoint(tmp_path / "c.pt", "s"))
    inner = [row["inner_loss"] for row in result.history]
    val = [row["val_loss"] for row in result.history]
    assert int(np.argmin(inner)) != int(np.argmin(val))
    assert result.best_epoch == int(np.argmin(inner)) and len(result.history) == 6
    best = torch.load(tmp_path / "c.pt", weights_only=False)["best"]  # what a resumed run compares against
    assert best["epoch"] == result.best_epoch and best["loss"] == pytest.approx(min(inner), rel=1e-9)
    assert result.monitor_scores.loss == pytest.approx(min(inner), rel=1e-5)
    assert result.scores.loss == pytest.approx(result.history[result.best_epoch]["val_loss"], rel=1e-5)
