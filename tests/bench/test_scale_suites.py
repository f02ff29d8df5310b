"""The ImageNet-size suites: a generated image folder (deterministic, reused, never overwriting another folder),
draws of a count of images decoded per item, a random seeded base, the full-precision row's own measures, and
the measures threads / per_layer_seconds / folder_io, end to end on a folder of a few images."""
from __future__ import annotations

import hashlib

import pytest
import torch

from deepshrink.bench import load_suite, plan_rows, read_results, run_suite
from deepshrink.bench import generated
from deepshrink.bench.data import build_bundle, describe
from deepshrink.bench.generated import MARKER, ensure_folder, parse_generate
from deepshrink.bench.report import render_markdown
from deepshrink.bench.runner import random_base_path
from deepshrink.bench.stale import planned_keys
from deepshrink.cli import main
from deepshrink.registry import create_model
from deepshrink.data import LazyImageDataset, get_dataset
from deepshrink.data.decode import decode_image
from deepshrink.data.transforms import normalize, resize_center_crop
from deepshrink.errors import UserError

GENERATE = {"train": 12, "test": 4, "classes": 4, "size": [160, 120]}


def _suite(root, **extra) -> dict:
    suite = {"name": "tiny-imagenet-like", "model": {"name": "resnet20", "args": {"num_classes": 4}},
             "data": {"name": "imagefolder", "root": root and str(root), "generate": GENERATE, "input_size": 32,
                      "calib": {"split": "train", "images": 8}, "eval": {"split": "test", "images": 4},
                      "batch_size": 4, "labels": False, "note": "generated images, not ImageNet"},
             "base": {"random": True}, "seed": 0,
             "measures": ["fidelity", "layer_seconds", "per_layer_seconds", "threads"],
             "rows": [{"method": "fp32", "label": "full precision", "measures": ["folder_io"]},
                      {"method": "ldnq_rtn", "set": ["params.levels=3"], "label": "round-to-nearest 3 levels"}]}
    suite.update(extra)
    return suite


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSHRINK_CACHE", str(tmp_path / "cache"))  # folder indexes, generated trees


def _digests(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.jpg"))}


def test_the_generated_folder_is_deterministic_complete_and_reused(tmp_path, monkeypatch):
    spec = parse_generate(GENERATE, "suite")
    first = ensure_folder(spec, seed=0, root=tmp_path / "a")
    again = ensure_folder(spec, seed=0, root=tmp_path / "b")
    assert len(_digests(first)) == 16 and _digests(first) == _digests(again)  # the same pixels from the same seed
    assert _digests(ensure_folder(spec, seed=1, root=tmp_path / "c")) != _digests(first)
    train = get_dataset("imagefolder", "train", root=first)
    assert isinstance(train, LazyImageDataset) and train.class_counts() == [3, 3, 3, 3]  # 160x120: read per item
    assert len(get_dataset("imagefolder", "test", root=first)) == 4  # written as val/, ImageNet's name
    monkeypatch.setattr(generated, "generate", lambda *a: pytest.fail("a complete folder was generated again"))
    assert ensure_folder(spec, seed=0, root=first) == first
    default = generated.folder_for(spec, 0)
    assert default.parent == tmp_path / "cache" / "generated"  # no root: the cache, never a results folder


def test_a_cut_off_generation_is_redone_and_a_foreign_folder_refused(tmp_path):
    spec = parse_generate(GENERATE, "suite")
    folder = ensure_folder(spec, seed=0, root=tmp_path / "a")
    expected = _digests(folder)
    marker = (folder / MARKER).read_text()
    (folder / MARKER).write_text(marker.replace('"complete": true', '"complete": false'))
    next(folder.rglob("*.jpg")).write_bytes(b"cut short")
    assert _digests(ensure_folder(spec, seed=0, root=folder)) == expected
    other = tmp_path / "photos"
    (other / "train").mkdir(parents=True)
    (other / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="holds other files than the generated images"):
        ensure_folder(spec, seed=0, root=other)
    with pytest.raises(UserError, match="holds other files"):  # another suite's settings
        ensure_folder(parse_generate({**GENERATE, "train": 8}, "suite"), seed=0, root=folder)
    assert (other / "holiday.jpg").read_bytes() == b"x"


def test_draws_of_a_count_are_seeded_decoded_per_item_and_centre_cropped(tmp_path):
    spec = load_suite(_suite(None)).data_spec  # root null: one folder per seed in the cache
    bundle, evaluation = build_bundle(spec, seed=0)
    assert isinstance(bundle.dataset, LazyImageDataset) and len(bundle.dataset) == 8 and len(evaluation.dataset) == 4
    again, _ = build_bundle(spec, seed=0)
    other, _ = build_bundle(spec, seed=3)
    assert again.dataset.targets.tolist() == bundle.dataset.targets.tolist()
    inputs = torch.cat([x for x, _ in bundle.calib])  # (8, 3, 32, 32)
    assert inputs.shape == (8, 3, 32, 32)
    full = get_dataset("imagefolder", "train", root=generated.folder_for(spec.generate, 0))
    index = torch.randperm(12, generator=torch.Generator().manual_seed(0))[:8].sort().values
    image = resize_center_crop(decode_image(full._read(int(index[0]))), 32)  # shorter side 37, centre 32
    assert torch.allclose(inputs[0], normalize(image[None], full.mean, full.std)[0])
    assert not torch.equal(torch.cat([x for x, _ in other.calib]), inputs)  # another seed: other pixels and draw
    assert "from a generated folder of 12 + 4 JPEGs (160x120) in 4 classes" in describe(spec, 8, 4)


@pytest.mark.parametrize("change, message", [
    ({"generate": {**GENERATE, "train": 0}}, "data.generate.train must be a positive integer"),
    ({"generate": {"train": 8, "classes": 2}}, "data.generate must be {train: N"),
    ({"generate": {**GENERATE, "classes": 9}}, "must be at most train and test"),
    ({"generate": {**GENERATE, "size": [160]}}, "data.generate.size must be [width, height]"),
    ({"name": "cifar10"}, "give `name: imagefolder`"),
    ({"calib": {"split": "train", "images": 0}}, "per_class / images a positive integer"),
    ({"calib": {"split": "train", "images": 4, "per_class": 1}}, "or {split: train|test, images: N}"),
])
def test_bad_generated_data_is_one_line(tmp_path, change, message):
    suite = _suite(tmp_path)
    with pytest.raises(UserError) as info:
        load_suite({**suite, "data": {**suite["data"], **change}})
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("base", [{"random": False}, {"random": True, "checkpoint": "b.pt"},
                                  {"random": True, "train": {"epochs": 1}}])
def test_a_random_base_is_true_and_alone(tmp_path, base):
    with pytest.raises(UserError, match="base.random must be `true`, alone"):
        load_suite(_suite(tmp_path, base=base))


def test_draw_count_generation_and_random_base_are_in_the_row_key(tmp_path):
    suite = _suite(tmp_path)
    keys = [r.key for r in plan_rows(load_suite(suite), "random:x")]
    for data in ({**suite["data"], "calib": {"split": "train", "images": 7}},
                 {**suite["data"], "generate": {**GENERATE, "size": [161, 120]}}):
        assert all(a != b.key for a, b in zip(keys, plan_rows(load_suite({**suite, "data": data}), "random:x")))
    assert [r.key for r in plan_rows(load_suite({**suite, "data": {**suite["data"], "root": "/elsewhere"}}),
                                     "random:x")] == keys  # where the tree lies does not change the pixels


def test_the_listed_full_precision_row_has_its_own_measures(tmp_path):
    rows = plan_rows(load_suite(_suite(tmp_path)), "random:x")
    assert [r.label for r in rows] == ["full precision", "round-to-nearest 3 levels"]
    assert "folder_io" in rows[0].measures and "folder_io" not in rows[1].measures


def test_the_shipped_suites_keep_the_scripts_settings():
    suite = load_suite("resnet50-imagenet-like")
    data = suite.data_spec
    assert (suite.model, suite.base) == ({"name": "resnet50", "args": {"num_classes": 1000}}, {"random": True})
    assert (data.generate.train, data.generate.classes, data.generate.width, data.generate.height) == \
        (100_000, 1000, 160, 120)
    assert (data.calib.images, data.input_size, data.labels) == (1024, 224, False)
    assert "not ImageNet" in data.note and "random weights" in data.note
    recipes = {r.label: r.recipe for r in plan_rows(suite, "random:x") if r.recipe}
    ldnq, lobs, pq = recipes.values()
    assert ldnq["params"]["levels"] == 3 and (lobs["params"]["sparsity"], lobs["params"]["mode"]) == (0.5, "one_shot")
    assert (pq["params"]["n_centroids"], pq["params"]["block_conv3x3"], pq["params"]["block_conv1x1"]) == (256, 9, 4)
    assert {"pattern": "conv1", "skip": True} in [{k: o[k] for k in ("pattern", "skip") if k in o}
                                                   for o in pq["layers"]]
    assert not pq["keep_first_last"]
    assert {"layer_seconds", "peak_rss", "load_average", "threads"} <= set(suite.measures)
    small = load_suite("resnet18-imagenet-like")
    assert small.data_spec.generate == data.generate  # one generated folder serves both suites
    assert small.model["name"] == "resnet18" and small.data_spec.calib.images == 64


def test_a_tiny_generated_suite_runs_end_to_end(tmp_path):
    out = tmp_path / "out"
    suite = load_suite(_suite(None))  # root null: generated into the cache, read from there by every row
    summary = run_suite(suite, out, log=lambda m: None)
    assert (summary["ran"], summary["failed"]) == (2, 0)
    fp, rtn = read_results(out / "results.jsonl")
    assert "top1" not in rtn and rtn["threads"] == torch.get_num_threads() and rtn["cpus"] >= 1
    convs = {n for n, m in create_model("resnet20", num_classes=4).named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(rtn["per_layer_seconds"]) == convs - {"conv1"}  # every compressed layer; the stem stays float
    assert fp["folder_images"] == 12 and fp["folder_classes"] == 4 and fp["index_cold_s"] >= 0
    assert fp["decode_alone_img_s"] > 0 and fp["loader_img_s"] > 0 and fp["loader_workers"] == 2
    assert "index_cold_s" not in rtn  # the folder is measured once, on the full-precision row
    assert "generated folder of 12 + 4 JPEGs" in fp["data_note"]
    base = random_base_path(suite, out)
    assert base.is_file() and rtn["base"] == str(base)
    assert planned_keys(suite, rtn["base"]) == {fp["key"], rtn["key"]}  # the stale-row check knows a random base
    state = torch.load(base, weights_only=True)
    torch.manual_seed(123)
    from deepshrink.bench.rows import random_base

    random_base(suite, tmp_path / "again.pt")  # drawn with the suite's seed, whatever the RNG held before
    assert all(torch.equal(v, state[k]) for k, v in torch.load(tmp_path / "again.pt", weights_only=True).items())
    report = render_markdown(read_results(out / "results.jsonl"))
    assert "threads" in report and "index build" in report and "generated images, not ImageNet" in report


def test_list_names_rows_without_drawing_the_random_base(tmp_path, capsys):
    import yaml

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(_suite(tmp_path / "folder")))
    assert main(["bench", "--suite", str(path), "--out", str(tmp_path / "out"), "--list"]) == 0
    assert "[to run ] full precision" in capsys.readouterr().out
    assert not (tmp_path / "out").exists() and not (tmp_path / "folder").exists()


def test_folder_io_refuses_data_that_is_not_a_folder(tmp_path):
    from deepshrink.bench.measures import MEASURES, MeasureContext

    class Loader:  # evaluation images held in memory, read from no folder
        dataset = type("Drawn", (), {"root": None})()

    ctx = MeasureContext(lambda: None, tmp_path, lambda: None, lambda: Loader())
    with pytest.raises(UserError, match="folder_io measure reads an image folder"):
        MEASURES["folder_io"].measure(ctx)
