"""Recipes: loading, --set overrides, per-layer selection, and the errors a user sees."""
import pytest
from torch import nn

from deepshrink.config import Recipe, TrainConfig, _apply_override, list_recipes, load_recipe, select_layers
from deepshrink.registry import METHODS
from deepshrink.errors import UserError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.fc = nn.Linear(4, 2)


def test_first_and_last_layers_stay_full_precision_by_default():
    chosen = select_layers(Net(), Recipe(method="x", params={"bits": 2}))
    assert set(chosen) == {"block.0", "block.2"}
    assert chosen["block.0"] == {"bits": 2}


def test_overrides_apply_in_order_and_can_skip_or_include():
    recipe = Recipe(method="x", params={"bits": 2}, layers=[
        {"pattern": "block.*", "params": {"bits": 4}},
        {"pattern": "block.2", "skip": True},
        {"pattern": "fc", "params": {"bits": 8}},
    ])
    chosen = select_layers(Net(), recipe)
    assert chosen == {"block.0": {"bits": 4}, "fc": {"bits": 8}}


def test_pattern_matching_nothing_is_an_error_listing_layers():
    with pytest.raises(UserError, match="match no Conv2d/Linear layer.*block.0"):
        select_layers(Net(), Recipe(method="x", layers=[{"pattern": "layer9.*"}]))
    with pytest.raises(UserError, match=r"\['layer9.\*'\] match no Conv2d/Linear layer"):
        select_layers(Net(), Recipe(method="x", layers=[{"pattern": "layer9.*", "params": {"bits": 4}}]))


def test_a_pattern_only_keeping_layers_float_that_matches_nothing_warns_and_compresses_every_layer():
    # e.g. xnor's `*.downsample.*` (ResNets' projections stay float) on a network without projections
    with pytest.warns(UserWarning, match=r"\['\*.downsample.\*'\] to keep in float match no Conv2d/Linear"):
        chosen = select_layers(Net(), Recipe(method="x", params={"bits": 2},
                                             layers=[{"pattern": "*.downsample.*", "skip": True}]))
    assert chosen == select_layers(Net(), Recipe(method="x", params={"bits": 2}))


def test_set_overrides_use_dotted_paths_and_default_to_method_params():
    data = {"method": "x", "train": {"epochs": 8}}
    _apply_override(data, "train.epochs=2")
    _apply_override(data, "weight_bits=4")
    _apply_override(data, "keep_first_last=false")
    assert data == {"method": "x", "train": {"epochs": 2}, "params": {"weight_bits": 4}, "keep_first_last": False}


def test_bad_set_syntax_is_refused():
    with pytest.raises(UserError, match="key=value"):
        _apply_override({}, "train.epochs")


def test_train_config_validates_its_fields():
    with pytest.raises(UserError, match="train.schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(UserError, match="train.lr"):
        TrainConfig(lr=0)


def test_unknown_recipe_key_names_allowed_keys():
    with pytest.raises(UserError, match="unknown key.*'epoch'"):
        Recipe(method="x", train={"epoch": 3})


def test_missing_recipe_file_names_builtin_recipes(tmp_path):
    with pytest.raises(UserError, match="neither a file nor a built-in recipe"):
        load_recipe(str(tmp_path / "nope.yaml"))


def test_a_name_is_a_file_then_a_built_in_recipe_then_a_method():
    assert load_recipe("magnitude").to_dict() == load_recipe({"method": "magnitude"}).to_dict()  # no recipe file
    assert load_recipe("bwn").train.epochs == 8  # recipes/bwn.yaml, not the method's defaults
    with pytest.raises(UserError, match="nor a method; built-in recipes: .*; methods: .*magnitude"):
        load_recipe("magnitud")


def test_recipe_without_method_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("params: {bits: 2}\n")
    with pytest.raises(UserError, match="no `method:`"):
        load_recipe(str(path))


def test_unknown_method_lists_registered_methods():
    with pytest.raises(UserError, match="unknown method 'nosuchmethod'; choose one of"):
        load_recipe({"method": "nosuchmethod"})


@pytest.mark.parametrize("name", list_recipes())
def test_every_builtin_recipe_validates_against_its_method(name):
    """A typo or an out-of-range value in a shipped recipe file fails here, not in a user's run."""
    recipe = load_recipe(name)
    entry = METHODS.get(recipe.method)
    assert isinstance(recipe.method_config(), entry.config_cls)
    assert recipe.train.epochs >= 1


def test_overrides_never_write_into_the_callers_recipe():
    """A suite's YAML anchor shares one recipe between rows: one row's --set must not reach the next."""
    from deepshrink.config import load_recipe

    shared = {"method": "pq", "params": {"n_centroids": 64}}
    load_recipe(shared, ["params.finetune_epochs=1"])
    assert shared == {"method": "pq", "params": {"n_centroids": 64}}


def test_the_cifar10_suite_plans_the_same_rows_every_time():
    from deepshrink.bench.plan import plan_rows
    from deepshrink.bench.suite import load_suite

    suite = load_suite("cifar10")
    first, second = [r.key for r in plan_rows(suite, "base")], [r.key for r in plan_rows(suite, "base")]
    assert first == second and len(first) == len(set(first)) == 1 + len(suite.rows)
