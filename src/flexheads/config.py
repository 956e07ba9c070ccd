"""The ``params.yaml`` schema: one validated model of the whole file, and the experiment matrix.

Every stage reads its settings from here, so a typo in params.yaml fails once, up front, with the key
path and the allowed values (``ParamsError``), never deep inside torch.  ``Params.runs()`` is the one
definition of the matrix ``tasks × attention × regimes × seeds`` that the CLI, Snakemake and DVC all share;
``Run.name`` is ``<task>-<attention>-<regime>-<seed>``, DVC's name for the matrix cell (a baseline:
``<task>-<baseline>``), so every component is ``[A-Za-z0-9_]`` (tasks, attention and baselines are fixed names,
regimes are ``RunNamePart``).  Numbers are strict and finite: ``steps: true`` or ``lr: .inf`` is an error, not 1 or inf.

The sections ``model.<task>``, ``train.<task>`` and ``data.<task>`` belong to each task (its settings module
``flexheads.tasks.settings.<task>``, found through :mod:`flexheads.tasks`); every task of ``experiment.tasks`` must
have all three.  Defaults live here and in those settings modules only, and params.yaml states each of them
(``tests/test_config.py`` checks they agree).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, SerializeAsAny, Strict, ValidationError,
                      ValidatorFunctionWrapHandler, create_model, field_validator, model_validator)

from flexheads.errors import ParamsError
from flexheads.tasks import BUILTIN_TASKS, registered_tasks, require_task, task_settings

ATTENTIONS = ("standard", "flexible_matched", "flexible")  # the default head configurations (heads.<task>)
BASELINES = ("martinez_mlp",)
TASK_SECTIONS = ("model", "train", "data")  # top-level sections with one sub-section per task

# Numbers are strict: YAML's `true` is not the integer 1, "3" is not 3 and 2.5 is not an integer; an integer is
# a valid float (`lr: 1`).  Non-finite floats (.inf, .nan) are refused by every section's model_config.
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0.0)]
Probability = Annotated[float, Strict(), Field(ge=0.0, lt=1.0)]

NAME_PATTERN = re.compile(r"[A-Za-z0-9_]+")


def _run_name_part(name: str) -> str:
    """``name`` unchanged if it may be a component of a run name; ValueError otherwise.

    Run names are ``<task>-<attention>-<regime>-<seed>`` and become file, folder and Snakemake rule names, so
    a component must not contain ``-`` (the separator), ``/`` (a nested folder) or anything outside ``[A-Za-z0-9_]``.
    """
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError("must be letters, digits and '_' only (it becomes part of run names "
                         "<task>-<attention>-<regime>-<seed>, which name files and Snakemake rules)")
    return name


RunNamePart = Annotated[str, AfterValidator(_run_name_part)]
TaskName = Annotated[str, AfterValidator(require_task)]


class Section(BaseModel):
    """A params.yaml section: unknown keys and non-finite floats are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Regime(Section):
    """A named training recipe: where LayerNorm sits, how weights start, the optimiser and the lr schedule.

    ``lr`` is the base learning rate the schedule multiplies; for ``schedule: noam`` the schedule is the
    rate itself (eq. 3.28) and ``lr`` is its scale factor (1.0 in Vaswani et al.).  A recipe states every value:
    no key of a regime has a default.
    """

    norm: Literal["post", "pre", "none"]
    init: Literal["xavier", "tfixup"]
    optimizer: Literal["adam", "radam"]
    schedule: Literal["constant", "noam", "linear", "exponential", "untuned_linear", "untuned_exponential"]
    lr: PositiveFloat
    warmup: NonNegativeInt  # steps; tau of linear/exponential warmup, or Noam's warmup
    betas: tuple[Probability, Probability]
    weight_decay: NonNegativeFloat
    grad_clip: NonNegativeFloat  # max global gradient norm; 0: no clipping (the papers' recipes clip nothing)

    @model_validator(mode="after")
    def _consistent(self) -> Regime:
        if self.schedule in ("noam", "linear", "exponential") and self.warmup == 0:
            raise ValueError(f"schedule '{self.schedule}' needs warmup > 0 (steps)")
        if self.init == "tfixup" and self.norm != "none":
            raise ValueError("init 'tfixup' is for LayerNorm-free models: set norm: none")
        return self


class Heads(Section):
    """One head configuration: ``n_heads`` heads of ``d_head`` (None: ``d_model / n_heads``, the standard width)."""

    n_heads: PositiveInt
    d_head: PositiveInt | None = None

    def shape(self, d_model: int) -> tuple[int, int]:
        """``(n_heads, d_head)`` in a model of width ``d_model``."""
        return self.n_heads, self.d_head or d_model // self.n_heads


class EncoderSettings(Section):
    """The transformer of one task (``model.<task>``; a task's settings add its own keys).  Its heads are not
    here: each head configuration of the matrix is ``heads.<task>.<attention>``, so editing one retrains only the
    runs that use it."""

    d_model: PositiveInt = 64
    n_layers: PositiveInt = 3
    d_ff: PositiveInt = 128
    dropout: Probability = 0.0
    activation: Literal["relu", "gelu"] = "gelu"


class TrainSettings(Section):
    """Optimisation loop settings for one task (``train.<task>``; counts are optimiser steps)."""

    steps: PositiveInt = 600
    batch_size: PositiveInt = 64
    checkpoint_every: PositiveInt = 200
    log_every: PositiveInt = 25  # metrics are buffered and sent to MLflow in one batch per interval
    grad_snapshot_steps: tuple[PositiveInt, ...] = (1, 2, 5, 10, 20, 50, 100)  # gradient histograms, fig. 3.16
    eval_batch_size: PositiveInt = 256
    eval_every: NonNegativeInt = 100  # validation metric every eval_every steps (training curves); 0 disables
    lr_scale: PositiveFloat = 1.0  # multiplies every regime's lr for this task's models
    # Speed switches (flexheads.train.fit): at their defaults CPU results are bit-identical to a loop without them;
    # like every key here they are part of the run config, so changing one retrains.
    loader_workers: NonNegativeInt = 0  # background processes preparing batches (flexheads.data.loader); 0: in-process
    compile: bool = False  # torch.compile the training step's loss and, through it, the model's forward
    fused_optimizer: bool = False  # Adam fused=True; RAdam (no fused kernel) foreach=True
    channels_last: bool = False  # pose2d: the CNN trunk's weights and input in torch.channels_last; others: no-op
    # Data-parallel ranks under torchrun (flexheads.distributed), one GPU each on CUDA; batch_size stays the global
    # batch. Results match 1 process up to float rounding, not bit for bit; a checkpoint resumes with any number.
    processes: PositiveInt = 1

    @model_validator(mode="after")
    def _batch_splits_over_processes(self) -> TrainSettings:
        if self.batch_size % self.processes:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of processes ({self.processes}): "
                             "each process trains on an equal share of every batch")
        return self


class Experiment(Section):
    """The matrix: one train/evaluate run per task × attention × regime × seed."""

    tasks: tuple[TaskName, ...] = BUILTIN_TASKS
    attention: tuple[RunNamePart, ...] = ATTENTIONS  # head configurations: keys of every task's heads.<task>
    regimes: tuple[RunNamePart, ...] = ("noam", "linear_untuned", "exponential_untuned", "radam", "tfixup", "preln")
    seeds: tuple[NonNegativeInt, ...] = (0,)  # model init and batch order; the report gives mean ± std over seeds

    @field_validator("tasks", "attention", "regimes", "seeds")
    @classmethod
    def _non_empty_unique(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if not values:
            raise ValueError("must list at least one value")
        if len(set(values)) != len(values):
            raise ValueError(f"lists a value twice: {list(values)}")
        return values


class Baseline(Section):
    """A reference model (the MLP of Martinez et al. 2017), trained and evaluated like a run, reported as a row."""

    task: TaskName = "pose3d"
    regime: str = "radam"  # its optimiser and schedule; LayerNorm placement and init do not apply
    seed: NonNegativeInt = 0  # its own (not the matrix's): adding seeds to the matrix does not retrain it
    hidden: PositiveInt = 1024
    n_blocks: PositiveInt = 2
    dropout: Probability = 0.5


class Tracking(Section):
    """MLflow settings. ``uri: null`` is the embedded local store; ``MLFLOW_TRACKING_URI`` overrides."""

    uri: str | None = None
    enabled: bool = True


@functools.cache
def _task_sections(kind: str, tasks: tuple[str, ...], registered: tuple[str, ...]) -> type[Section]:
    """The schema of the top-level section ``kind`` (model, train or data): one sub-section per registered task,
    required for the tasks of the experiment and optional for the others."""
    fields: dict[str, Any] = {}
    for name in registered:
        section = getattr(task_settings(name), kind)
        fields[name] = (section, ...) if name in tasks else (section | None, None)
    return create_model(f"{kind.capitalize()}Sections", __base__=Section, **fields)


class Params(Section):
    """The whole params.yaml."""

    threads: PositiveInt = 1  # CPU threads per train/evaluate process: float sums depend on it, so it is a param
    experiment: Experiment
    regimes: dict[RunNamePart, Regime]
    heads: dict[TaskName, dict[RunNamePart, Heads]]  # task → head configuration name → heads
    model: SerializeAsAny[Section]  # one EncoderSettings subclass per task (_task_sections)
    train: SerializeAsAny[Section]  # one TrainSettings subclass per task
    data: SerializeAsAny[Section]  # one data section per task
    baselines: dict[Literal[BASELINES], Baseline]  # type: ignore[valid-type]  ({} for none)
    tracking: Tracking = Tracking()

    @model_validator(mode="wrap")
    @classmethod
    def _with_task_sections(cls, raw: Any, handler: ValidatorFunctionWrapHandler) -> Params:
        """Validate ``model``/``train``/``data`` against the registered tasks' settings, then the rest; every
        error of both at once, each at its key path."""
        if not isinstance(raw, dict):
            return handler(raw)
        experiment = raw.get("experiment")
        listed = experiment.get("tasks") if isinstance(experiment, dict) else None
        registered = registered_tasks()
        tasks = tuple(t for t in listed if t in registered) if isinstance(listed, (list, tuple)) else ()
        errors: list[Any] = []
        sections = {}
        for kind in TASK_SECTIONS:
            if kind in raw and not isinstance(raw[kind], Section):
                try:
                    sections[kind] = _task_sections(kind, tasks, registered).model_validate(raw[kind])
                except ValidationError as err:
                    errors += [{**e, "loc": (kind, *e["loc"])} for e in err.errors()]
        failed = {e["loc"][0] for e in errors}
        try:
            params = handler({**raw, **sections})
        except ValidationError as err:
            errors += [e for e in err.errors() if not (e["loc"] and e["loc"][0] in failed)]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return params

    @model_validator(mode="after")
    def _regimes_are_defined(self) -> Params:
        used = {"experiment.regimes": list(self.experiment.regimes)}
        used |= {f"baselines.{name}.regime": [b.regime] for name, b in self.baselines.items()}
        for key, names in used.items():
            unknown = [r for r in names if r not in self.regimes]
            if unknown:
                raise ValueError(f"{key}: unknown regime {unknown}; defined under 'regimes:' are "
                                 f"{sorted(self.regimes)}")
        return self

    @model_validator(mode="after")
    def _heads_are_defined_and_fit(self) -> Params:
        if "none" in self.experiment.attention:
            raise ValueError("experiment.attention: 'none' is reserved for the baselines' runs")
        for task in self.experiment.tasks:
            defined = self.heads.get(task, {})
            unknown = [a for a in self.experiment.attention if a not in defined]
            if unknown:
                raise ValueError(f"experiment.attention: {unknown} not defined under heads.{task} "
                                 f"(defined: {sorted(defined)})")
            d_model = getattr(self.model, task).d_model
            for name, heads in defined.items():
                if heads.d_head is None and d_model % heads.n_heads:
                    raise ValueError(f"heads.{task}.{name}: n_heads ({heads.n_heads}) must divide "
                                     f"model.{task}.d_model ({d_model}) when d_head is not given "
                                     "(d_head = d_model / n_heads)")
        return self

    @model_validator(mode="after")
    def _task_constraints(self) -> Params:
        for task in self.experiment.tasks:
            check = task_settings(task).check
            if check is not None:
                check(getattr(self.model, task), getattr(self.train, task), getattr(self.data, task))
        return self

    def hash(self) -> str:
        """Short stable hash of the whole validated file (the report's ``params_hash``)."""
        return params_hash(self.model_dump(mode="json"))

    def runs(self) -> list[Run]:
        """The experiment matrix in a stable order (task, attention, regime, seed)."""
        e = self.experiment
        return [Run(*cell) for cell in itertools.product(e.tasks, e.attention, e.regimes, e.seeds)]

    def baseline_runs(self) -> list[Run]:
        """One run per baseline of a task in the matrix, named ``<task>-<baseline>``, at the baseline's seed."""
        return [Run(b.task, "none", b.regime, b.seed, baseline=name)
                for name, b in self.baselines.items() if b.task in self.experiment.tasks]

    def all_runs(self) -> list[Run]:
        return self.runs() + self.baseline_runs()

    def run(self, name: str) -> Run:
        """The matrix or baseline run called ``name``; ParamsError listing the valid names otherwise."""
        for run in self.all_runs():
            if run.name == name:
                return run
        raise ParamsError(f"no run named '{name}' in the experiment matrix; runs are: "
                          f"{[r.name for r in self.all_runs()]}")

    def run_config(self, run: Run) -> RunConfig:
        return RunConfig(
            run=run,
            seed=run.seed,
            regime=self.regimes[run.regime],
            model=getattr(self.model, run.task),
            train=getattr(self.train, run.task),
            heads=None if run.baseline else self.heads[run.task][run.attention],
            baseline=self.baselines[run.baseline] if run.baseline else None,
        )

    def task_data(self, task: str) -> Section:
        """The ``data.<task>`` section; ParamsError if params.yaml has none for ``task``."""
        section = getattr(self.data, require_task(task), None)
        if section is None:
            raise ParamsError(f"params.yaml has no data.{task} section (needed to run the {task} task's stages)")
        return section


@dataclass(frozen=True)
class Run:
    """One cell of the experiment matrix."""

    task: str
    attention: str  # a head configuration of heads.<task> ("none" for a baseline)
    regime: str
    seed: int = 0
    baseline: str | None = None  # a baseline model name instead of the task's transformer

    @property
    def name(self) -> str:
        if self.baseline:
            return f"{self.task}-{self.baseline}"
        return f"{self.task}-{self.attention}-{self.regime}-{self.seed}"


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on; saved in its checkpoint and logged as MLflow params."""

    run: Run
    seed: int
    regime: Regime
    model: EncoderSettings
    train: TrainSettings
    heads: Heads | None = None  # the transformer's heads (None: a baseline)
    baseline: Baseline | None = None

    @property
    def head_shape(self) -> tuple[int, int]:
        """``(n_heads, d_head)`` of the run's head configuration."""
        if self.heads is None:
            raise ValueError(f"run {self.run.name} builds no attention (a baseline)")
        return self.heads.shape(self.model.d_model)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.run.task,
            "attention": self.run.attention,
            "regime_name": self.run.regime,
            "seed": self.seed,
            "regime": self.regime.model_dump(mode="json"),
            "model": self.model.model_dump(mode="json"),
            "train": self.train.model_dump(mode="json"),
            **({"heads": self.heads.model_dump(mode="json")} if self.heads else {}),
            **({"baseline": self.baseline.model_dump(mode="json")} if self.baseline else {}),
        }

    def flat(self) -> dict[str, Any]:
        """``{"model.d_model": 128, ...}``: the dict flattened with dotted keys (MLflow params)."""
        return flatten(self.to_dict())

    def hash(self) -> str:
        """Short stable hash of the config (MLflow tag ``params_hash``)."""
        return params_hash(self.to_dict())

    def resume_hash(self) -> str:
        """The hash a checkpoint must match to be resumed: the config's but for ``train.processes``, so a run
        goes on with another number of processes (a cluster job restarted on fewer GPUs)."""
        config = self.to_dict()
        config["train"] = {key: value for key, value in config["train"].items() if key != "processes"}
        return params_hash(config)


def rule_name(stage: str) -> str:
    """The Snakemake rule of a DVC stage: ``train@pose3d-standard-noam-0`` → ``train__pose3d_standard_noam_0``."""
    return re.sub(r"\W", "_", stage.replace("@", "__"))


def params_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"d_model": 64}}`` → ``{"model.d_model": 64}``."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice is an error instead of the last one silently winning,
    and that ``1e-3`` is a float as in YAML 1.2 (and DVC, which reads params.yaml as 1.2), not the string '1e-3'
    that strict floats would refuse."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_implicit_resolver(  # YAML 1.1 floats need a '.'; 1.2 allows 1e-3 (a copy: SafeLoader unchanged)
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; ParamsError names the file, the key path and what was expected."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(f"{path}: invalid params:\n" + _describe(err)) from None


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        is_key = loc[-1:] == ["[key]"]  # pydantic's loc for a mapping key that failed: (..., key, "[key]")
        key = (".".join(loc[:-1]) + " (the key)") if is_key else (".".join(loc) or "(top level)")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against params.yaml's documented keys)"
        shown = e["type"] not in ("missing", "extra_forbidden") and not isinstance(e["input"], dict)
        got = f" (got {e['input']!r})" if shown else ""
        lines.append(f"  {key}: {msg}{got}")
    return "\n".join(lines)
