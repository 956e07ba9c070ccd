"""params.yaml schema: the repo's file loads, the matrix is tasks × attention × regimes, and every kind of
mistake in the file fails up front with the key path and the allowed values."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from flexheads.config import (Baseline, Experiment, Params, ParamsError, Regime, Run, RunConfig, Tracking, load_params,
                              params_hash)
from flexheads.tasks import BUILTIN_TASKS, task_settings

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


def raw_params() -> dict[str, Any]:
    return yaml.safe_load(PARAMS_YAML.read_text())


def write(tmp_path: Path, raw: Any) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def error_lines(message: str) -> list[str]:
    """The per-key lines of a schema error (indented under the header line)."""
    return [line for line in message.splitlines() if line.startswith("  ")]


# --- the repo's file and the matrix ---------------------------------------------------------------


def test_repo_params_yaml_loads() -> None:
    params = load_params(PARAMS_YAML)
    raw = raw_params()
    assert params.experiment.seeds == tuple(raw["experiment"]["seeds"])
    assert set(params.regimes) == set(raw["regimes"])
    assert params.model.pose3d.d_model == raw["model"]["pose3d"]["d_model"]


def test_dumped_copy_of_repo_file_loads(tmp_path: Path) -> None:
    """Control for the malformed-file tests below: the unmutated dump is valid."""
    assert load_params(write(tmp_path, raw_params())) == load_params(PARAMS_YAML)


def test_runs_are_the_product_in_file_order() -> None:
    params = load_params(PARAMS_YAML)
    e = raw_params()["experiment"]
    cells = itertools.product(e["tasks"], e["attention"], e["regimes"], e["seeds"])
    assert [run.name for run in params.runs()] == [f"{t}-{a}-{r}-{s}" for t, a, r, s in cells]
    assert len(params.runs()) == len(e["tasks"]) * len(e["attention"]) * len(e["regimes"]) * len(e["seeds"])


def test_runs_order_follows_the_lists_not_the_alphabet() -> None:
    raw = raw_params()
    raw["experiment"]["tasks"] = ["pose3d"]
    raw["experiment"]["attention"] = ["flexible", "standard"]
    raw["experiment"]["regimes"] = ["radam", "noam"]
    params = Params.model_validate(raw)
    assert [r.name for r in params.runs()] == [
        "pose3d-flexible-radam-0",
        "pose3d-flexible-noam-0",
        "pose3d-standard-radam-0",
        "pose3d-standard-noam-0",
    ]
    assert params.runs()[1] == Run("pose3d", "flexible", "noam", 0)


def test_seeds_are_the_innermost_axis_of_the_matrix() -> None:
    raw = raw_params()
    raw["experiment"].update(tasks=["pose3d"], attention=["standard"], regimes=["radam", "noam"], seeds=[3, 1])
    params = Params.model_validate(raw)
    assert [r.name for r in params.runs()] == [
        "pose3d-standard-radam-3", "pose3d-standard-radam-1", "pose3d-standard-noam-3", "pose3d-standard-noam-1"]
    assert params.run_config(params.run("pose3d-standard-noam-1")).seed == 1
    assert {r.seed for r in params.baseline_runs()} == {0}  # a baseline trains at its own seed, not the matrix's


def test_a_seed_listed_twice_is_an_error() -> None:
    raw = raw_params()
    raw["experiment"]["seeds"] = [0, 0]
    with pytest.raises(ValidationError, match="lists a value twice"):
        Params.model_validate(raw)


def test_run_by_name() -> None:
    params = load_params(PARAMS_YAML)
    assert params.run("pose3d-flexible-radam-0") == Run("pose3d", "flexible", "radam", 0)


def test_unknown_run_name_lists_valid_names() -> None:
    params = load_params(PARAMS_YAML)
    with pytest.raises(ParamsError, match="no run named 'pose3d-flexible-sgd'") as err:
        params.run("pose3d-flexible-sgd")
    for run in params.runs():
        assert run.name in str(err.value)


# --- malformed files ----------------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting the dotted key ``path`` of the raw params to ``value``."""

    def mutate(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


def _add_regime_to_matrix(raw: dict[str, Any]) -> None:
    raw["experiment"]["regimes"].append("warmupless")


# (mutation, substrings every one of which the message must contain)
MALFORMED = {
    "unknown top-level key": (_set("trian", {"pose3d": {"steps": 1}}), ["trian: unknown key"]),
    "unknown nested key": (_set("model.pose3d.d_modle", 64), ["model.pose3d.d_modle: unknown key"]),
    "wrong type": (_set("train.pose3d.steps", "many"), ["train.pose3d.steps:", "valid integer", "(got 'many')"]),
    "zero head width": (
        _set("heads.pose3d.flexible.d_head", 0),
        ["heads.pose3d.flexible.d_head:", "greater than 0", "(got 0)"],
    ),
    "n_heads does not divide d_model": (
        _set("heads.pose3d.standard.n_heads", 7),
        ["heads.pose3d.standard: n_heads (7) must divide model.pose3d.d_model (64)"],
    ),
    "head configuration not defined": (
        _set("experiment.attention", ["standard", "wide"]),
        ["experiment.attention", "['wide']", "heads.pose3d"],
    ),
    "head configuration name": (
        _set("heads.pose3d", {"std-8": {"n_heads": 8}}),
        ["heads.pose3d.std-8", "letters, digits and '_' only"],
    ),
    "heads of an unknown task": (
        _set("heads.pose4d", {"standard": {"n_heads": 8}}),
        ["heads.pose4d", "pose4d"],
    ),
    "unknown regime in matrix": (
        _add_regime_to_matrix,
        [
            "experiment.regimes: unknown regime ['warmupless']",
            f"defined under 'regimes:' are {sorted(raw_params()['regimes'])}",
        ],
    ),
    "unknown norm": (
        _set("regimes.noam.norm", "middle"),
        ["regimes.noam.norm:", "'post', 'pre' or 'none'", "(got 'middle')"],
    ),
    "negative warmup": (
        _set("regimes.preln.warmup", -5),
        ["regimes.preln.warmup:", "greater than or equal to 0", "(got -5)"],
    ),
    "linear schedule without warmup": (
        _set("regimes.preln.warmup", 0),
        ["regimes.preln:", "schedule 'linear' needs warmup > 0"],
    ),
    "tfixup with post-LN": (_set("regimes.tfixup.norm", "post"), ["regimes.tfixup:", "set norm: none"]),
    "even window": (_set("model.pose3d.window", 2), ["model.pose3d.window:", "must be odd", "(got 2)"]),
    "pretrained narrow trunk": (
        _set("model.pose2d", {**raw_params()["model"]["pose2d"], "pretrained": True, "trunk_width": 32}),
        ["model.pose2d:", "weights, which exist for trunk_width: 64 only (got trunk_width: 32)"],
    ),
    "beta of 1": (_set("regimes.radam.betas", [0.9, 1.0]), ["regimes.radam.betas.1:", "less than 1"]),
    # numbers are strict and finite: YAML's `true` is not 1, `.inf` and `.nan` are not learning rates
    "bool for int": (_set("train.pose3d.steps", True), ["train.pose3d.steps:", "valid integer", "(got True)"]),
    "bool in a list of ints": (_set("experiment.seeds", [0, True]), ["experiment.seeds.1:", "valid integer"]),
    "float for int": (_set("threads", 2.5), ["threads:", "valid integer", "(got 2.5)"]),
    "bool for float": (_set("regimes.radam.lr", True), ["regimes.radam.lr:", "valid number", "(got True)"]),
    "inf": (_set("regimes.radam.lr", float("inf")), ["regimes.radam.lr:", "finite number", "(got inf)"]),
    "nan": (_set("regimes.noam.grad_clip", float("nan")), ["regimes.noam.grad_clip:", "finite number", "(got nan)"]),
    "nan probability": (_set("model.pose3d.dropout", float("nan")), ["model.pose3d.dropout:", "finite number"]),
    # run-name components: <task>-<attention>-<regime>-<seed> names files, folders and Snakemake rules
    "regime named a/b": (_set("regimes.a/b", raw_params()["regimes"]["radam"]),
                         ["regimes.a/b (the key): must be letters, digits and '_' only", "(got 'a/b')"]),
    "regime named a(b": (_set("regimes.a(b", raw_params()["regimes"]["radam"]),
                         ["regimes.a(b (the key): must be letters, digits and '_' only", "(got 'a(b')"]),
    "regime named a-b": (_set("regimes.a-b", raw_params()["regimes"]["radam"]),
                         ["regimes.a-b (the key): must be letters, digits and '_' only", "(got 'a-b')"]),
    "matrix regime a-b": (_set("experiment.regimes", ["radam", "a-b"]),
                          ["experiment.regimes.1: must be letters, digits and '_' only", "(got 'a-b')"]),
    "baseline key a/b": (_set("baselines.a/b", raw_params()["baselines"]["martinez_mlp"]),
                         ["baselines.a/b (the key): ", "'martinez_mlp'", "(got 'a/b')"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_params_name_key_and_allowed_values(tmp_path: Path, case: str) -> None:
    mutate, expected = MALFORMED[case]
    raw = raw_params()
    mutate(raw)
    path = write(tmp_path, raw)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert message.startswith(f"{path}: invalid params")
    for part in expected:
        assert part in message
    assert len(error_lines(message)) == 1, message  # the one mistake, no follow-on noise


def test_yaml_1_2_exponent_without_dot_is_a_float(tmp_path: Path) -> None:
    """PyYAML reads ``1e-3`` as a string (YAML 1.1); strict floats would refuse it, so the loader reads 1.2 floats."""
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS_YAML.read_text().replace("lr: 3.0e-3", "lr: 3e-3"))
    assert load_params(path).regimes["radam"].lr == 3e-3
    assert yaml.safe_load("lr: 3e-3") == {"lr": "3e-3"}  # yaml's own SafeLoader is left as it was


def test_an_integer_is_a_valid_float() -> None:
    raw = raw_params()
    raw["regimes"]["radam"]["lr"] = 1
    assert Params.model_validate(raw).regimes["radam"].lr == 1.0


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ParamsError, match="file not found") as err:
        load_params(path)
    assert str(path) in str(err.value)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: [0, 1\nmodel: {\n")
    with pytest.raises(ParamsError, match="not valid YAML") as err:
        load_params(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(("text", "kind"), [("- seed\n- model\n", "list"), ("", "NoneType"), ("42\n", "int")])
def test_top_level_not_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=f"expected a mapping of sections at the top level, got {kind}"):
        load_params(path)


def test_missing_regimes_section(tmp_path: Path) -> None:
    raw = raw_params()
    del raw["regimes"]
    with pytest.raises(ParamsError, match="regimes: Field required"):
        load_params(write(tmp_path, raw))


# --- RunConfig ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(PARAMS_YAML)


def test_head_shape_of_each_configuration(params: Params) -> None:
    heads, d_model = raw_params()["heads"]["pose3d"], raw_params()["model"]["pose3d"]["d_model"]
    standard = heads["standard"]["n_heads"]
    assert params.run_config(Run("pose3d", "standard", "noam")).head_shape == (standard, d_model // standard)
    for name in ("flexible", "flexible_matched"):
        shape = (heads[name]["n_heads"], heads[name]["d_head"])
        assert params.run_config(Run("pose3d", name, "noam")).head_shape == shape


def test_flexible_matched_has_standard_inner_width_and_parameters() -> None:
    from flexheads.models.config import encoder_config
    from flexheads.nn import TransformerEncoder

    params = load_params(PARAMS_YAML)
    for task in params.experiment.tasks:
        counts = {}
        for attention in ("standard", "flexible_matched", "flexible"):
            config = params.run_config(Run(task, attention, "noam"))
            n_heads, d_head = config.head_shape
            counts[attention] = sum(p.numel() for p in TransformerEncoder.from_config(encoder_config(config))
                                    .parameters())
            if attention != "flexible":
                assert n_heads * d_head == config.model.d_model
        assert counts["flexible_matched"] == counts["standard"] < counts["flexible"]
        assert params.run_config(Run(task, "flexible_matched", "noam")).head_shape[1] == \
            params.run_config(Run(task, "flexible", "noam")).head_shape[1]


def test_run_config_picks_the_regime_and_task_sections(params: Params) -> None:
    config = params.run_config(Run("pose3d", "flexible", "radam"))
    assert config.regime == params.regimes["radam"]
    assert config.model == params.model.pose3d
    assert config.train == params.train.pose3d
    assert config.seed == 0


def test_hash_is_stable(params: Params, tmp_path: Path) -> None:
    run = Run("pose3d", "standard", "noam")
    reloaded = load_params(write(tmp_path, raw_params()))
    h = params.run_config(run).hash()
    assert h == params.run_config(run).hash() == reloaded.run_config(run).hash()
    assert len(h) == 12 and int(h, 16) >= 0
    assert params_hash({"b": 1, "a": [2, 3]}) == params_hash({"a": [2, 3], "b": 1})  # key order is irrelevant


def test_hash_changes_with_one_head_configuration_only_for_its_runs(params: Params) -> None:
    raw = raw_params()
    raw["heads"]["pose3d"]["flexible"]["d_head"] += 8
    changed = Params.model_validate(raw)
    for run in params.runs():
        moved = changed.run_config(run).hash() != params.run_config(run).hash()
        assert moved == (run.task == "pose3d" and run.attention == "flexible"), run.name


def test_hash_changes_with_one_regime_value_only_for_that_regime(params: Params) -> None:
    raw = raw_params()
    raw["regimes"]["noam"]["warmup"] += 1
    changed = Params.model_validate(raw)
    noam, radam = Run("pose3d", "standard", "noam"), Run("pose3d", "standard", "radam")
    assert changed.run_config(noam).hash() != params.run_config(noam).hash()
    assert changed.run_config(radam).hash() == params.run_config(radam).hash()


def test_hash_differs_between_cells(params: Params) -> None:
    hashes = {params.run_config(run).hash() for run in params.runs()}
    assert len(hashes) == len(params.runs())


def test_flat_has_dotted_keys(params: Params) -> None:
    config = params.run_config(Run("pose3d", "flexible", "noam"))
    flat = config.flat()
    raw = raw_params()
    assert flat["task"] == "pose3d"
    assert flat["attention"] == "flexible"
    assert flat["regime_name"] == "noam"
    assert flat["model.d_model"] == raw["model"]["pose3d"]["d_model"]
    assert flat["model.window"] == raw["model"]["pose3d"]["window"]
    assert flat["regime.warmup"] == raw["regimes"]["noam"]["warmup"]
    assert flat["regime.betas"] == raw["regimes"]["noam"]["betas"]
    assert flat["train.steps"] == raw["train"]["pose3d"]["steps"]
    assert flat["heads.d_head"] == raw["heads"]["pose3d"]["flexible"]["d_head"]
    assert not any(isinstance(v, dict) for v in flat.values())
    # every leaf of to_dict() appears exactly once under its dotted path
    n_leaves = 4 + sum(len(config.to_dict()[section]) for section in ("regime", "model", "train", "heads"))
    assert len(flat) == n_leaves


def test_run_config_is_frozen(params: Params) -> None:
    config = params.run_config(Run("pose3d", "standard", "noam"))
    assert isinstance(config, RunConfig)
    with pytest.raises(Exception):
        config.seed = 1  # type: ignore[misc]


def test_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    text = PARAMS_YAML.read_text() + "\nthreads: 3\n"
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=r"duplicate key 'threads'"):
        load_params(path)


# --- one place for defaults ------------------------------------------------------------------------


def _sections(model: type[BaseModel], raw: dict[str, Any], path: str) -> list[tuple[str, type[BaseModel], dict]]:
    """``(key path, schema class, params.yaml mapping)`` of every fixed-key section below ``model``."""
    found = [(path, model, raw)]
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(raw.get(name), dict):
            found += _sections(annotation, raw[name], f"{path}.{name}")
    return found


def test_params_yaml_states_every_value_and_agrees_with_the_schema_defaults() -> None:
    """Defaults live in the schema only, and params.yaml shows every one of them: each key of each section is
    written in the file, and where the schema has a default the file's value is that default."""
    raw = raw_params()
    sections = [("(top level)", Params, raw), *_sections(Experiment, raw["experiment"], "experiment"),
                *_sections(Tracking, raw["tracking"], "tracking")]
    sections += [s for name, regime in raw["regimes"].items() for s in _sections(Regime, regime, f"regimes.{name}")]
    sections += [s for name, b in raw["baselines"].items() for s in _sections(Baseline, b, f"baselines.{name}")]
    for task in BUILTIN_TASKS:
        settings = task_settings(task)
        for kind in ("model", "train", "data"):
            sections += _sections(getattr(settings, kind), raw[kind][task], f"{kind}.{task}")
    assert len(sections) > 20
    for path, schema, stated in sections:
        missing = set(schema.model_fields) - set(stated)
        assert not missing, f"params.yaml does not state {path}.{sorted(missing)}"
        defaults = {name: field.get_default(call_default_factory=True)
                    for name, field in schema.model_fields.items() if not field.is_required()}
        for name, default in defaults.items():
            value = schema.model_validate(stated).model_dump(mode="json")[name]
            assert value == to_jsonable_python(default), f"{path}.{name}"


@pytest.mark.parametrize("kind", ["model", "train", "data"])
def test_a_listed_task_without_its_section_is_an_error(tmp_path: Path, kind: str) -> None:
    raw = raw_params()
    del raw[kind]["pose2d"]
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, raw))
    assert error_lines(str(err.value)) == [f"  {kind}.pose2d: Field required"]
    raw["experiment"]["tasks"] = ["pose3d", "cxr"]  # a task outside the matrix may leave its sections out
    assert getattr(getattr(load_params(write(tmp_path, raw)), kind), "pose2d") is None


def test_a_task_section_error_comes_with_every_other_error(tmp_path: Path) -> None:
    raw = raw_params()
    raw["model"]["cxr"]["d_model"] = "wide"
    raw["model"]["pose9d"] = {}
    raw["threads"] = 0
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, raw))
    lines = error_lines(str(err.value))
    assert any(line.startswith("  model.cxr.d_model: ") for line in lines)
    assert any(line.startswith("  model.pose9d: unknown key") for line in lines)
    assert any(line.startswith("  threads: ") for line in lines)


def test_thesis_params_are_a_complete_drop_in_for_params_yaml() -> None:
    """params/thesis.yaml validates, states every key params.yaml states (so `cp` over params.yaml is all it
    takes), runs the same matrix, and picks the real datasets at the thesis's sizes."""
    thesis_yaml = PARAMS_YAML.parent / "params" / "thesis.yaml"
    thesis, default = load_params(thesis_yaml), load_params(PARAMS_YAML)

    def keys(node: Any, prefix: str = "") -> set[str]:
        if not isinstance(node, dict):
            return {prefix}
        return {key for name, child in node.items() for key in keys(child, f"{prefix}{name}.")}

    assert keys(yaml.safe_load(thesis_yaml.read_text())) == keys(yaml.safe_load(PARAMS_YAML.read_text()))
    assert [r.name for r in thesis.all_runs()] == [r.name for r in default.all_runs()]
    assert (thesis.data.pose3d.source, thesis.data.pose2d.source, thesis.data.cxr.source) == ("h36m", "coco", "nih")
    assert (thesis.data.cxr.image_size, thesis.model.cxr.patch_size, thesis.model.cxr.d_model) == (224, 16, 384)
    assert tuple(thesis.data.pose2d.crop_size) == (256, 192) and thesis.model.pose3d.window == 243
    assert all(getattr(thesis.train, task).compile for task in BUILTIN_TASKS)
