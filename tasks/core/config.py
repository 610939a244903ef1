"""Case-study configuration: one YAML per case study, validated once by pydantic at the flow boundary.

A case-study file holds the base settings plus ``profiles`` (``quick``, ``full``) whose values are deep-merged
over the base; ``--set a.b=c`` overrides are merged last. Every error names the file and the dotted key.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from tasks import PROJECT_ROOT

log = logging.getLogger(__name__)

CASE_STUDY_DIR = PROJECT_ROOT / "case_studies"
CASE_STUDIES = {"mobile-bert": "mobile_bert.yaml", "long-document": "long_document.yaml"}


class ConfigError(ValueError):
    """A configuration problem the user can fix; the CLI turns it into exit code 2."""

    def __init__(self, source: str, key: str | None, message: str):
        self.source, self.key, self.message = source, key, message
        where = f"{source}: key '{key}'" if key else source
        super().__init__(f"{where}: {message}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    source: str = Field("bbc", description="bbc | keps | folder | csv | jsonl | parquet | hf:<dataset name> (bbc and "
                        "keps are packaged: offline; keps keeps its own train/validation/test split)")
    path: str | None = Field(None, description="file or folder for csv/jsonl/parquet/folder sources")
    text_field: str = "text"
    label_field: str = "label"
    hf_config: str | None = None
    hf_split: str = "train"
    max_samples: int | None = Field(None, gt=0, description="stratified subsample (for quick runs)")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        kinds = ("bbc", "keps", "folder", "csv", "jsonl", "parquet")
        if not (self.source in kinds or self.source.startswith("hf:")):
            raise ValueError(f"source: unknown data source '{self.source}'; use one of {', '.join(kinds)} or hf:<name>")
        if self.source in ("folder", "csv", "jsonl", "parquet"):
            if not self.path:
                raise ValueError(f"path: data source '{self.source}' needs data.path")
            if not Path(self.path).expanduser().exists():
                raise ValueError(f"path: file or folder not found: {self.path}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("test_fraction: val_fraction + test_fraction must leave at least 10% for training")
        return self


class ModelConfig(Strict):
    source: str = Field("packaged:minilm-l6", description="packaged:minilm-l6 | hub id | local folder")
    max_length: int = Field(128, ge=8, le=8192)
    trust_remote_code: bool = False
    revision: str | None = None


def _device_here(name: str) -> str:
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"cuda asked for, but this torch ({torch.__version__}) sees no CUDA device: use auto "
                             "(CUDA when present, else CPU) or cpu")
    return name


Device = Annotated[Literal["auto", "cpu", "cuda"], AfterValidator(_device_here)]


class TrainConfig(Strict):
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(1e-4, gt=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between resumable checkpoints")
    max_steps: int | None = Field(None, ge=1)
    device: Device = Field("auto", description="where training runs (auto: CUDA when present)")
    nproc_per_node: int = Field(1, ge=1, le=64, description="> 1: fine-tune/distill under torchrun + DDP (gloo on CPU, NCCL on GPU)")


class LongTrainConfig(TrainConfig):
    """Training of the long-document mechanisms (tasks/longdoc/train_long.py): every mechanism from the same
    pretrained checkpoint, the same number of optimizer steps."""
    max_tokens: int = Field(4096, ge=64, description="sliding-window / full-long train on inputs up to this many tokens")
    chunk_tokens: int = Field(512, ge=16, le=512, description="input length of truncate-512 and of chunked-512's chunks")
    class_weights: bool = Field(True, description="class-weighted cross-entropy (balanced) for imbalanced labels")
    gradient_checkpointing: bool = Field(False, description="recompute long-model layers in backward (less memory)")
    select_on_validation: bool = Field(True, description="score validation macro-F1 after every epoch and keep the "
                                       "best epoch's weights (only when training lasts more than one epoch)")
    head_init: Literal["probe", "random"] = Field(
        "probe", description="probe: the classifier head starts as a logistic regression on the pretrained encoder's "
        "features of each document's first chunk_tokens tokens, C on validation (LP-FT; tasks/core/probe.py); "
        "random: a fresh head")


class EvaluateConfig(Strict):
    batch_size: int = Field(64, ge=1)
    device: Device = Field(
        "auto", description="where eager PyTorch variants are evaluated (auto: CUDA when present); int8 and "
        "ExecuTorch variants run on CPU, ONNX on CUDA only with onnxruntime-gpu. Latency benchmarks stay CPU.")


class BenchmarkConfig(Strict):
    seq_len: int = Field(128, ge=8)
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32])
    threads: list[int | Literal["all"]] = Field(default_factory=lambda: [1, "all"])
    warmup: int = Field(3, ge=0)
    iters: int = Field(30, ge=3, description="timed iterations per (batch size, threads) setting")
    max_seconds: float = Field(10.0, gt=0, description="stop a setting early after this long (min 3 iterations)")

    @model_validator(mode="after")
    def _check(self) -> "BenchmarkConfig":
        if any(b < 1 for b in self.batch_sizes):
            raise ValueError("batch_sizes: every batch size must be >= 1")
        if any(t != "all" and t < 1 for t in self.threads):
            raise ValueError("threads: use positive integers or 'all'")
        return self


class Constraints(Strict):
    """What a variant must meet to be selected: p50 latency (batch 1, 1 thread), size on disk, accuracy drop against
    the teacher. ``min_speedup`` / ``min_size_ratio`` state the first two relative to the fp32 teacher measured in
    the same run (same benchmark, same machine), so one case-study file means the same on every host — a 20x goal
    written as 1.0 ms on a host whose teacher takes 20 ms is 26x where it takes 26 ms. Where both forms are set, the
    tighter limit holds; :meth:`resolved` turns them into absolute limits once the teacher is measured."""

    max_latency_ms: float | None = Field(None, gt=0)
    max_size_mb: float | None = Field(None, gt=0)
    max_accuracy_drop: float | None = Field(None, ge=0, le=1)
    min_speedup: float | None = Field(None, gt=0, description="teacher p50 latency / the variant's, at least")
    min_size_ratio: float | None = Field(None, gt=0, description="teacher size on disk / the variant's, at least")

    def resolved(self, teacher_latency_ms: float | None, teacher_size_mb: float | None) -> Constraints:
        """Absolute limits only: each relative one as the teacher's figure divided by it (the tighter where both)."""
        def limit(absolute, teacher, ratio, key):
            if ratio is None:
                return absolute
            if teacher is None:
                raise ValueError(f"constraints.{key} needs the teacher's measurement, and the teacher has none")
            return teacher / ratio if absolute is None else min(absolute, teacher / ratio)

        return Constraints(max_latency_ms=limit(self.max_latency_ms, teacher_latency_ms, self.min_speedup, "min_speedup"),
                           max_size_mb=limit(self.max_size_mb, teacher_size_mb, self.min_size_ratio, "min_size_ratio"),
                           max_accuracy_drop=self.max_accuracy_drop)


# ------------------------------------------------------------------------------------------ variants


class FinetuneOverrides(Strict):
    """Overrides of the ``train`` section for a step that trains (unset keys inherit ``train``)."""

    epochs: float | None = Field(None, ge=0)
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0, lt=1)
    batch_size: int | None = Field(None, ge=1)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)


def train_with(train: TrainConfig, overrides: FinetuneOverrides | None) -> TrainConfig:
    """The ``train`` section with a step's fine-tune overrides applied (unset override keys inherit ``train``)."""
    if overrides is None:
        return train
    return train.model_copy(update=overrides.model_dump(exclude_none=True))


class PreprocessConfig(Strict):
    lowercase: bool = False
    strip_punctuation: bool = False
    remove_stopwords: bool = False


class AugmentConfig(Strict):
    copies: int = Field(1, ge=0, le=10)
    insert: float = Field(0.1, ge=0, le=1)
    swap: float = Field(0.1, ge=0, le=1)
    delete: float = Field(0.1, ge=0, lt=1)


LayerKeep = Union[Literal["every_other"], int, list[int]]


class QuantizeStep(Strict):
    technique: Literal["quantize"]
    linear: bool = True
    embeddings: bool = False


class ExportStep(Strict):
    technique: Literal["export"]
    format: Literal["onnx", "pte"]
    quantize: Literal["int8"] | None = None
    seq_len: int = Field(128, ge=8)

    @model_validator(mode="after")
    def _check(self) -> "ExportStep":
        if self.format == "pte" and importlib.util.find_spec("executorch") is None:
            raise ValueError("format: 'pte' needs ExecuTorch, which is not installed: pip install 'effilm[mobile]'")
        return self


class PruneUnstructuredStep(Strict):
    technique: Literal["prune_unstructured"]
    sparsity: float = Field(..., gt=0, lt=1)
    scope: Literal["global", "layer"] = "global"


class PruneStructuredStep(Strict):
    technique: Literal["prune_structured"]
    ffn_fraction: float = Field(0.5, ge=0, lt=1)
    heads_fraction: float = Field(0.0, ge=0, lt=1)
    importance: Literal["weight", "gradient"] = "gradient"
    calibration_batches: int = Field(8, ge=1)
    recovery: FinetuneOverrides = Field(default_factory=lambda: FinetuneOverrides(epochs=1))


class LayerReduceStep(Strict):
    technique: Literal["layer_reduce"]
    keep: LayerKeep = "every_other"
    finetune: FinetuneOverrides = Field(default_factory=FinetuneOverrides)
    preprocess: PreprocessConfig | None = None
    augment: AugmentConfig | None = None


class DistillStep(Strict):
    technique: Literal["distill"]
    keep: LayerKeep = "every_other"
    student: str | None = Field(None, description="a smaller model (same vocabulary) instead of a layer-reduced teacher")
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)
    hidden_mse: float = Field(0.0, ge=0)
    finetune: FinetuneOverrides = Field(default_factory=FinetuneOverrides)


class VocabTrimStep(Strict):
    technique: Literal["vocab_trim"]
    min_count: int = Field(1, ge=1)
    corpus: Literal["train"] = "train"


class ArchitectureStep(Strict):
    technique: Literal["architecture"]
    model: str = Field(..., description="hub id or local folder of a lightweight architecture, fine-tuned like the teacher")
    finetune: FinetuneOverrides = Field(default_factory=FinetuneOverrides)
    trust_remote_code: bool = False


Step = Annotated[
    Union[QuantizeStep, ExportStep, PruneUnstructuredStep, PruneStructuredStep, LayerReduceStep, DistillStep,
          VocabTrimStep, ArchitectureStep],
    Field(discriminator="technique"),
]


STEP = TypeAdapter(Step)


class StepContext(Strict):
    """What the flow hands every compression step beside the step's own settings."""

    data: dict[str, Any] = Field(..., description="the prepared data (tasks.core.data.prepare): paths, labels, fingerprint")
    train: TrainConfig
    seed: int
    out_dir: str


class ScheduleConfig(Strict):
    """When `effilm serve` / prefect.yaml runs this case study (a Prefect server's scheduler creates the runs)."""

    cron: str | None = Field(None, description="cron expression, e.g. '0 2 * * *' (02:00 every day)")
    interval_seconds: int | None = Field(None, ge=5, description="run every N seconds (instead of cron)")
    timezone: str = "UTC"
    active: bool = True

    @model_validator(mode="after")
    def _check(self) -> "ScheduleConfig":
        if self.cron and self.interval_seconds:
            raise ValueError("interval_seconds: give either cron or interval_seconds, not both")
        if self.cron:
            from prefect.client.schemas.schedules import CronSchedule

            try:
                CronSchedule(cron=self.cron)
            except Exception:
                raise ValueError(f"cron: not a valid cron expression: {self.cron!r} (five fields: min hour day month weekday)") from None
        try:
            import zoneinfo

            zoneinfo.ZoneInfo(self.timezone)
        except Exception:
            raise ValueError(f"timezone: unknown time zone {self.timezone!r} (use an IANA name like 'Europe/Berlin')") from None
        return self


class ExecutionConfig(Strict):
    """How a flow's independent tasks fan out (Prefect task runners). Benchmarks always run one at a time."""

    task_runner: Literal["thread", "dask"] = "thread"
    max_workers: int = Field(2, ge=1, le=256, description="parallel tasks (threads, or Dask workers of a local cluster)")
    dask_address: str | None = Field(None, description="scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786")

    @model_validator(mode="after")
    def _check(self) -> "ExecutionConfig":
        if self.task_runner == "dask" and importlib.util.find_spec("prefect_dask") is None:
            raise ValueError("task_runner: 'dask' needs prefect-dask, which is not installed: pip install 'effilm[team]'")
        return self


class Variant(Strict):
    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    source: str = Field("teacher", description="'teacher' or the name of an earlier variant")
    steps: list[Step] = Field(..., min_length=1)


class SelectConfig(Strict):
    objective: Literal["latency", "size", "accuracy"] = "latency"
    registered_model: str = "effilm-mobile-bert"
    alias: str = "mobile"
    register_model: bool = True


RUNTIMES = ("torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8", "pte-fp32", "pte-int8")
OBJECTIVES = ("accuracy", "latency", "size", "runtime_rss")


class SearchSpace(Strict):
    """The recipe space of ``effilm search``: each key lists the values a trial may pick (a one-value list fixes it).
    A recipe is: distill the teacher into ``layers`` of its layers (picked ``layer_pick``) for ``distill_epochs`` at
    ``distill_learning_rate``,
    remove ``heads_fraction`` of the attention heads and ``ffn_fraction`` of every FFN (structured, with a recovery
    fine-tune), optionally trim the vocabulary to the training corpus, then run in one ``runtime``."""

    layers: list[int] = Field(default_factory=lambda: [2, 3, 4], min_length=1, description="encoder layers kept")
    layer_pick: list[Literal["spread", "bottom", "top"]] = Field(
        default_factory=lambda: ["spread", "bottom"], min_length=1,
        description="which layers: spread (evenly, e.g. 3 of 6 = 0,2,4), bottom (the first k), top (the last k)")
    temperature: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0], min_length=1)
    alpha: list[float] = Field(default_factory=lambda: [0.5, 0.8], min_length=1, description="weight of the soft loss")
    hidden_mse: list[float] = Field(default_factory=lambda: [0.0, 1.0], min_length=1)
    distill_epochs: list[Annotated[float, Field(gt=0)] | None] = Field(
        default_factory=lambda: [None], min_length=1, description="epochs the student is distilled for (null: the "
        "train section's epochs)")
    distill_learning_rate: list[Annotated[float, Field(gt=0, lt=1)] | None] = Field(
        default_factory=lambda: [None], min_length=1, description="the student's learning rate (null: the train "
        "section's; a 1-layer student needs more than the teacher's fine-tuning rate)")
    heads_fraction: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5], min_length=1)
    ffn_fraction: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75], min_length=1)
    recovery_epochs: list[float] = Field(default_factory=lambda: [0.5], min_length=1,
                                         description="fine-tune after structured pruning")
    vocab_trim: list[bool] = Field(default_factory=lambda: [True, False], min_length=1)
    vocab_min_count: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1], min_length=1, description="a trimmed vocabulary keeps tokens seen this often "
        "(the int8 embedding table is most of a small model's size)")
    runtime: list[Literal[RUNTIMES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8", "pte-int8"], min_length=1)

    @model_validator(mode="after")
    def _check(self) -> "SearchSpace":
        if any(k < 1 for k in self.layers):
            raise ValueError("layers: keep at least 1 layer")
        for key in ("heads_fraction", "ffn_fraction"):
            if any(not 0 <= f < 1 for f in getattr(self, key)):
                raise ValueError(f"{key}: fractions must be in [0, 1)")
        if any(not 0 <= a <= 1 for a in self.alpha):
            raise ValueError("alpha: must be in [0, 1]")
        if any(t <= 0 for t in self.temperature):
            raise ValueError("temperature: must be > 0")
        if any(r.startswith("pte") for r in self.runtime) and importlib.util.find_spec("executorch") is None:
            raise ValueError("runtime: pte-* runtimes need ExecuTorch, which is not installed: pip install "
                             "'effilm[mobile]' (or drop them from search.space.runtime)")
        return self


class SearchConfig(Strict):
    """``effilm search mobile-bert``: a multi-objective recipe search (Optuna) under the ``constraints``."""

    trials: int | None = Field(24, ge=1, description="trials to finish (completed or stopped early), counted across "
                               "resumes; null: no count, search.time_budget_minutes ends the search")
    time_budget_minutes: float | None = Field(None, gt=0, description="stop asking for new trials this long after "
                                              "the search started (the teacher included)")
    sampler: Literal["tpe", "nsga2", "random"] = Field(
        "tpe", description="tpe: Optuna's multi-objective TPE (learns from the first trials: right for budgets of "
        "tens of trials); nsga2: evolutionary (needs generations of ~population_size trials); random: the baseline")
    population_size: int = Field(8, ge=2, description="nsga2 only: trials per generation")
    startup_trials: int = Field(6, ge=1, description="tpe: random trials before the model takes over; every "
                                "sampler: follow-ups begin once this many trials have finished")
    seed: int = 0
    objectives: list[Literal[OBJECTIVES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["accuracy", "latency", "size", "runtime_rss"], min_length=2,
        description="validation accuracy (max), p50 ms at batch 1 / 1 thread, MB on disk, runtime peak RSS (min)")
    space: SearchSpace = Field(default_factory=SearchSpace)
    seed_recipes: list[dict[str, Any]] = Field(
        default_factory=list, description="recipes (space keys -> one value) tried first, e.g. the hand-written one; "
        "they count toward the trials")
    follow_ups: int = Field(
        6, ge=0, description="at most this many follow-up trials (they count toward the trials): once the startup "
        "trials are in, a trial that meets the accuracy constraint but misses latency or size is tried again with "
        "the tail that shrinks a model most cheaply — the vocabulary trimmed as far as the space allows and the "
        "runtime of the best trial so far — on its already built student (an export and a benchmark, no "
        "distillation); one a batch; 0: the sampler alone")
    early_stop_margin: float | None = Field(
        0.02, ge=0, le=1, description="stop a trial after distillation when the student's validation accuracy is "
        "below teacher - constraints.max_accuracy_drop - this margin (later steps only remove capacity); null: never")
    benchmark: BenchmarkConfig = Field(
        default_factory=lambda: BenchmarkConfig(batch_sizes=[1], threads=[1]),
        description="each trial's benchmark (the objective is p50 at batch 1 / 1 thread)")
    study_name: str | None = Field(None, description="default: derived from the case study, space and inputs")
    storage: str | None = Field(None, description="Optuna storage URL; default: beside the MLflow store (sqlite: "
                                "<store>.optuna.db; PostgreSQL: schema optuna of the same database)")

    @model_validator(mode="after")
    def _check(self) -> "SearchConfig":
        if len(set(self.objectives)) != len(self.objectives) or "accuracy" not in self.objectives:
            raise ValueError("objectives: list each objective once, accuracy included")
        if self.trials is None and self.time_budget_minutes is None:
            raise ValueError("trials: null (no count) needs time_budget_minutes, or the search would never end")
        if 1 not in self.benchmark.batch_sizes or 1 not in self.benchmark.threads:
            raise ValueError("benchmark: the latency objective needs batch size 1 and 1 thread")
        for i, recipe in enumerate(self.seed_recipes):
            unknown = set(recipe) - set(SearchSpace.model_fields)
            if unknown:
                raise ValueError(f"seed_recipes: recipe {i} has unknown key(s) {sorted(unknown)}; keys: "
                                 f"{', '.join(SearchSpace.model_fields)}")
            for key, value in recipe.items():
                if value not in getattr(self.space, key):
                    raise ValueError(f"seed_recipes: recipe {i}: {key}={value!r} is not one of space.{key} "
                                     f"{getattr(self.space, key)} (add it there)")
            for key in SearchSpace.model_fields:  # a seed is one fixed recipe: no key is left to the sampler
                values = getattr(self.space, key)
                if key not in recipe and len(values) > 1:
                    raise ValueError(f"seed_recipes: recipe {i} does not set {key}: add it, one of space.{key} "
                                     f"{values}")
                recipe.setdefault(key, values[0])
        return self


class MobileBertConfig(Strict):
    name: Literal["mobile-bert"] = "mobile-bert"
    experiment: str = "effilm/mobile-bert"
    profile: str = "quick"
    output_dir: str = "outputs/mobile-bert"
    seed: int = 42
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    constraints: Constraints = Field(default_factory=Constraints)
    variants: list[Variant] = Field(default_factory=list)
    select: SelectConfig = Field(default_factory=SelectConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)

    @model_validator(mode="after")
    def _check_variants(self) -> "MobileBertConfig":
        if self.benchmark.seq_len > self.model.max_length:
            raise ValueError(f"benchmark.seq_len: {self.benchmark.seq_len} contradicts model.max_length="
                             f"{self.model.max_length} (the model never sees that many tokens)")
        for key, inherited in (("distill_epochs", "epochs"), ("distill_learning_rate", "learning_rate")):
            values, same = getattr(self.search.space, key), getattr(self.train, inherited)
            if None in values and same in values:  # the same student under two names: one is enough
                log.info("search.space.%s: null already means train.%s (%g); the %g listed beside it is dropped",
                         key, inherited, same, same)
                values[:] = [v for v in values if v != same]
                for recipe in self.search.seed_recipes:
                    if recipe.get(key) == same:
                        recipe[key] = None
        seen = {"teacher"}
        for i, v in enumerate(self.variants):
            if v.name in seen:
                raise ValueError(f"variants.{i}.name: duplicate variant name '{v.name}'")
            if v.source not in seen:
                raise ValueError(f"variants.{i}.source: '{v.source}' is not 'teacher' or an earlier variant")
            seen.add(v.name)
        return self


# ------------------------------------------------------------------------------------ long documents

MECHANISMS = ("truncate-512", "chunked-512", "hierarchical", "sliding-window", "full-long", "hf-longformer", "bigbird")


class LongConfig(Strict):
    max_positions: int = Field(4096, ge=512, le=65536)
    attention_window: int = Field(256, ge=16, description="both sides together, as Longformer's attention_window")
    max_tokens: int = Field(4096, ge=128, description="documents are cut to this many tokens by long mechanisms")
    device: Device = Field(
        "auto", description="where the long-document mechanisms and the summarization encoder run (auto: CUDA when "
        "present); the scaling benchmark's device is its own (scaling.device)")
    autocast_bf16: bool = Field(True, description="bf16 autocast for long-document inference on CUDA devices that "
                                "support it (ignored on CPU)")
    attention_backend: Literal["auto", "dense", "flex", "blocked"] = Field(
        "auto", description="how sliding-window attention is computed (tasks/longdoc/attention.py); auto: on CPU "
        "blocked (dense masked SDPA while one block covers the input), on CUDA dense for short inputs and compiled "
        "FlexAttention for long ones")

    @model_validator(mode="after")
    def _check(self) -> "LongConfig":
        if self.attention_window % 2:
            raise ValueError("attention_window: must be even (it is split equally on both sides)")
        if self.max_tokens > self.max_positions:
            raise ValueError(f"max_tokens: {self.max_tokens} exceeds max_positions={self.max_positions}")
        return self


class LongEvalConfig(Strict):
    buckets: list[int] = Field(default_factory=lambda: [512, 1024, 2048], description="token-length bucket edges")
    max_docs: int | None = Field(None, ge=1, description="evaluate on at most this many test documents")


class ScalingConfig(Strict):
    lengths: list[int] = Field(default_factory=lambda: [512, 1024, 2048, 4096])
    mechanisms: list[str] = Field(default_factory=lambda: ["full-long", "sliding-window", "hf-longformer", "chunked-512"])
    iters: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "ScalingConfig":
        bad = [m for m in self.mechanisms if m not in MECHANISMS or m == "hierarchical"]
        if bad:
            raise ValueError(f"mechanisms: '{bad[0]}' cannot be swept (hierarchical needs its trained weights); "
                             f"choose from {', '.join(m for m in MECHANISMS if m != 'hierarchical')}")
        return self


class SummarizeData(Strict):
    source: str = Field("bbc-headlines", description="bbc-headlines | keps | bbc-summary | jsonl | hf:<dataset> "
                        "(bbc-headlines and keps are packaged: offline)")
    hf_config: str | None = None
    hf_split: str = "test"
    path: str | None = None
    text_field: str = "text"
    summary_field: str = "summary"
    max_docs: int | None = Field(600, ge=10)

    @model_validator(mode="after")
    def _check(self) -> "SummarizeData":
        if not (self.source in ("bbc-headlines", "keps", "bbc-summary", "jsonl") or self.source.startswith("hf:")):
            raise ValueError(f"source: unknown summarization source '{self.source}'; use bbc-headlines, keps, "
                             "bbc-summary, jsonl or hf:<name>")
        if self.source in ("bbc-summary", "jsonl"):
            if not self.path:
                raise ValueError(f"path: summarization source '{self.source}' needs summarize.data.path")
            if not Path(self.path).expanduser().exists():
                raise ValueError(f"path: file or folder not found: {self.path}")
        return self


class ScorerConfig(Strict):
    """Fine-tuning of the long encoder as the extractive sentence scorer (on greedy-ROUGE oracle labels)."""

    epochs: float = Field(1.0, gt=0, description="passes over the training documents (one document per step)")
    learning_rate: float = Field(3e-5, gt=0, lt=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_train_docs: int | None = Field(None, ge=1, description="train on at most this many documents")
    loss: Literal["bce", "pairwise", "listwise"] = Field(
        "pairwise", description="pairwise: RankNet's logistic loss on every (oracle, other) sentence pair of a document "
        "(only the order within a document counts, which is all the budgeted pick uses); bce: weighted binary "
        "cross-entropy per sentence (is it an oracle sentence?); listwise: ListNet's cross-entropy between the softmax "
        "of a document's scores and its oracle labels spread evenly. Validation ROUGE-2 (top-k), pairwise vs bce: "
        "BBC News Summary 0.7122 vs 0.7101, KEPs 0.1109 vs 0.1040; listwise 0.7139 on BBC but 0.694 vs 0.699 at the budget")
    global_markers: bool = Field(True, description="global attention on every sentence marker (each sentence's "
                                 "state reads the whole document, Longformer's summarization recipe); false: on the "
                                 "first marker alone, ~30 % less inference time (validation ROUGE-2: BBC News Summary "
                                 "0.7101 every marker vs 0.7061; KEPs 0.1040 vs 0.1094: a tie within a point)")


class SummarizeConfig(Strict):
    enabled: bool = True
    data: SummarizeData = Field(default_factory=SummarizeData)
    budget: Literal["words", "k"] = Field(
        "words", description="words: every method fills the same word budget (k_values scaled: the budget is chosen "
        "on validation for the method under test and applied to all), so scores compare at equal length; k: each "
        "method's own top-k sentences, k chosen on validation")
    k_values: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 2, 3], min_length=1,
                                                        description="sentence counts tried on validation "
                                "(budget words: k x the training references' mean sentence length in words)")
    scorer: ScorerConfig = Field(default_factory=ScorerConfig)
    max_tokens: int = Field(1024, ge=64, description="tokens of the document the extractive encoder reads")
    oracle_max_sentences: int = Field(
        4, ge=1, description="at most this many sentences in a document's greedy-ROUGE oracle labels (the scorer's "
        "training targets); the greedy choice also stops when ROUGE stops improving, so a large value means no cap. "
        "A cap below the references' sentence count labels some summary sentences 0 (on BBC News Summary, lifting "
        "the benchmark's 10 to 40 did not help: validation ROUGE-2 0.692 vs 0.695)")
    abstractive_model: str | None = Field(None, description="LED / seq2seq model id or folder (full profile)")
    generation: dict[str, Any] = Field(default_factory=lambda: {"max_new_tokens": 128, "num_beams": 2})


class LongDocumentConfig(Strict):
    name: Literal["long-document"] = "long-document"
    experiment: str = "effilm/long-document"
    profile: str = "quick"
    output_dir: str = "outputs/long-document"
    seed: int = 42
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: LongTrainConfig = Field(default_factory=LongTrainConfig)
    long: LongConfig = Field(default_factory=LongConfig)
    classic: list[Literal["tfidf-first512", "tfidf-whole", "embed-chunks", "hybrid"]] = Field(
        default_factory=lambda: ["tfidf-first512", "tfidf-whole", "embed-chunks", "hybrid"],
        description="peers in the same table: TF-IDF + logistic regression on the first 512 tokens / the whole "
        "document; the frozen encoder's chunk embeddings + logistic regression; the two averaged (a hybrid) "
        "(tasks/longdoc/classic.py)")
    mechanisms: list[str] = Field(default_factory=lambda: ["truncate-512", "chunked-512", "sliding-window", "full-long"])
    evaluate: LongEvalConfig = Field(default_factory=LongEvalConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    summarize: SummarizeConfig = Field(default_factory=SummarizeConfig)

    @model_validator(mode="after")
    def _check(self) -> "LongDocumentConfig":
        bad = [m for m in self.mechanisms if m not in MECHANISMS]
        if bad:
            raise ValueError(f"mechanisms: unknown mechanism '{bad[0]}'; choose from {', '.join(MECHANISMS)}")
        if self.train.max_tokens > self.long.max_positions:
            raise ValueError(f"train.max_tokens: {self.train.max_tokens} exceeds long.max_positions="
                             f"{self.long.max_positions} (the long model has no positions past it)")
        return self


SCHEMAS: dict[str, type[Strict]] = {"mobile-bert": MobileBertConfig, "long-document": LongDocumentConfig}


# --------------------------------------------------------------------------------------------- loading


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(items: list[str] | None, source: str = "--set") -> dict:
    """``["train.epochs=2", "data.max_samples=100"]`` -> nested dict, values parsed as YAML scalars."""
    result: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(source, item, "override must look like key.sub=value")
        dotted, raw = item.split("=", 1)
        dotted = dotted.strip()
        if not dotted or any(not part for part in dotted.split(".")):
            raise ConfigError(source, dotted, "override key is empty")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(source, dotted, f"cannot parse value {raw!r}: {exc}") from None
        node = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(source, dotted, "conflicting overrides")
        node[leaf] = value
    return result


def _format_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def validate(study: str, raw: dict, source: str) -> Strict:
    schema = SCHEMAS[study]
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        msg = err["msg"]
        # model_validator errors carry "field: message" so the bad key is still named.
        if err["type"] == "value_error" and ": " in msg:
            msg = msg.removeprefix("Value error, ")
            field, _, msg = msg.partition(": ")
            loc.append(field)
        if err["type"] == "extra_forbidden":
            parent = schema
            for part in loc[:-1]:
                ann = parent.model_fields.get(str(part))
                parent = ann.annotation if ann is not None else parent
            allowed = ", ".join(getattr(parent, "model_fields", {}).keys())
            msg = f"unknown key (allowed here: {allowed})"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = f"{msg} (got {err.get('input')!r})" if "input" in err and not isinstance(err["input"], dict) else msg
        more = f" (+{len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
        raise ConfigError(source, _format_loc(tuple(loc)), msg + more) from None


def case_study_path(study: str) -> Path:
    if study not in CASE_STUDIES:
        raise ConfigError("effilm run", "case_study", f"unknown case study '{study}'; choose one of {', '.join(CASE_STUDIES)}")
    return CASE_STUDY_DIR / CASE_STUDIES[study]


def load_config(
    study: str,
    profile: str = "quick",
    overrides: list[str] | None = None,
    path: str | os.PathLike | None = None,
) -> Strict:
    """Read a case-study YAML, apply the profile and ``--set`` overrides, validate once."""
    file = Path(path) if path else case_study_path(study)
    source = str(file)
    if not file.is_file():
        raise ConfigError(source, None, "case-study file not found")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, f"not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(source, None, "top level must be a mapping of sections")
    profiles = raw.pop("profiles", {}) or {}
    if not isinstance(profiles, dict):
        raise ConfigError(source, "profiles", "must be a mapping of profile name -> overrides")
    if profile not in profiles:
        raise ConfigError(source, "profiles", f"unknown profile '{profile}'; this file defines {', '.join(profiles) or 'none'}")
    merged = deep_merge(raw, profiles[profile] or {})
    merged["profile"] = profile
    set_values = parse_overrides(overrides)
    merged = deep_merge(merged, set_values)
    return validate(study, merged, source + (" (with --set overrides)" if set_values else ""))


def to_flat_params(cfg: BaseModel) -> dict[str, str]:
    """Flatten the resolved config for MLflow params: ``{"train.epochs": "1.0", ...}``."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = str(value)[:500]

    walk("", cfg.model_dump(mode="json"))
    return out
