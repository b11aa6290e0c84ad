"""Pipeline configuration: YAML validated by pydantic, with dotted `--set` overrides.

Unknown keys and bad values are errors that name the key. API keys never live here: `api_key_env`
names the environment variable that holds one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Provider = Literal["openai", "anthropic", "local"]
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
DEFAULT_MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest", "local": "SmolLM2-135M-Instruct"}


class ConfigError(Exception):
    """A user error in the configuration: printed as one line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


URL = r"^https?://[^\s/$.?#][^\s]*$"


class LLMOverride(Strict):
    """Any subset of the LLM settings; a stage's `llm` overrides the top-level one key by key."""

    provider: Provider | None = None
    model: str | None = None
    base_url: str | None = Field(None, pattern=URL)
    api_key_env: str | None = None
    max_concurrency: int | None = Field(None, ge=1, le=1024)
    rpm: int | None = Field(None, ge=1, le=10_000_000)
    tpm: int | None = Field(None, ge=1, le=10_000_000_000)
    input_tpm: int | None = Field(None, ge=1, le=10_000_000_000)
    output_tpm: int | None = Field(None, ge=1, le=10_000_000_000)
    limit_name: str | None = None
    mode: Literal["live", "batch"] | None = None
    batch_poll_s: float | None = Field(None, gt=0, le=3600)
    timeout_s: float | None = Field(None, gt=0, le=3600)
    max_retries: int | None = Field(None, ge=0, le=20)
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    structured_retries: int | None = Field(None, ge=0, le=10)


class LLMConfig(Strict):
    provider: Provider = "local"
    model: str | None = None
    base_url: str | None = Field(None, pattern=URL, description="an OpenAI- or Anthropic-compatible endpoint, http(s)://")
    api_key_env: str | None = None
    max_concurrency: int = Field(8, ge=1, le=1024)
    rpm: int | None = Field(None, ge=1, le=10_000_000, description="requests per minute to the endpoint, in every 60-second window")
    tpm: int | None = Field(None, ge=1, le=10_000_000_000, description="tokens (in + out) per minute")
    input_tpm: int | None = Field(None, ge=1, le=10_000_000_000, description="input tokens per minute (Anthropic limits them apart)")
    output_tpm: int | None = Field(None, ge=1, le=10_000_000_000, description="output tokens per minute")
    limit_name: str | None = Field(None, description="a Prefect global concurrency limit every request holds a slot "
                                                     "of, shared by every run on a Prefect server; `auto`: a name "
                                                     "derived from the endpoint")
    timeout_s: float = Field(120.0, gt=0, le=3600)
    max_retries: int = Field(6, ge=0, le=20)
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(512, ge=1, le=1_000_000)
    structured_retries: int = Field(2, ge=0, le=10)
    mode: Literal["live", "batch"] = Field("live", description="batch: through the provider's Batch API, at its "
                                                              "discount, answers within hours")
    budget_usd: float | None = Field(None, gt=0, le=1_000_000, description="the run stops, resumably, before it would spend more "
                                                            "(priced by `prices`)")
    batch_poll_s: float = Field(30.0, gt=0, le=3600, description="how often a provider batch is polled (mode: batch)")

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODEL[self.provider]

    @property
    def key_env(self) -> str | None:
        return self.api_key_env or DEFAULT_KEY_ENV.get(self.provider)

    def api_key(self) -> str | None:
        """The key from the environment; a clear error if the provider needs one and it is not set."""
        env = self.key_env
        if env is None:
            return None
        key = os.environ.get(env)
        if not key:
            raise ConfigError(f"missing API key: set the environment variable {env} (provider {self.provider})")
        return key

    def merged(self, override: LLMOverride | None) -> "LLMConfig":
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_none=True))


DedupMethod = Literal["exact", "minhash", "rouge", "semantic"]
OnFailure = Literal["quarantine", "fail"]
Aspect = Literal["helpfulness", "honesty", "instruction_following", "truthfulness", "overall"]
Evolution = Literal["deepen", "concretize", "constrain", "reasoning", "breadth"]
UF_PRINCIPLES = ("helpfulness", "honesty", "truthfulness")


class DedupConfig(Strict):
    """Near-duplicate removal for a stage; `threshold` is the similarity above which a row is a duplicate."""

    method: DedupMethod | None = "rouge"
    threshold: float | None = Field(None, gt=0, le=1, description="default per method: rouge 0.7, minhash 0.8, semantic 0.9")
    shingle: Literal["word", "char"] = "word"
    shingle_size: int = Field(3, ge=1, le=32)
    permutations: int = Field(128, ge=8, le=4096)
    bands: int = Field(32, ge=1, le=4096)

    @model_validator(mode="after")
    def _bands_split_the_permutations(self) -> "DedupConfig":
        if self.permutations % self.bands:
            raise ValueError(f"bands ({self.bands}) must divide permutations ({self.permutations})")
        return self


class EvolConfig(Strict):
    """Evol-Instruct: rewrite accepted instructions into harder (in-depth) or new same-domain (breadth) ones."""

    enabled: bool = False
    per_round: int = Field(4, ge=1, le=10_000, description="accepted instructions evolved per round")
    evolutions: list[Evolution] = Field(default_factory=lambda: ["deepen", "concretize", "constrain", "reasoning", "breadth"],
                                        min_length=1)


class DatasetTarget(Strict):
    """Run until this many rows of a final dataset have passed every gate."""

    dataset: Literal["instructions", "dpo", "sft"]
    rows: int = Field(ge=1, le=10_000_000)


class InstructionsConfig(Strict):
    target: Annotated[int, Field(ge=1, le=10_000_000)] | DatasetTarget = Field(
        20, description="kept instructions to make, or {dataset: dpo, rows: N}: rows of a final dataset")
    max_tokens: int | None = Field(None, ge=1, le=10**13, description="a budget: no new round once the run has used this many "
                                                           "tokens (all stages)")
    per_prompt: int = Field(4, ge=1, le=20, description="new tasks asked for in one prompt")
    prompts_per_round: int | None = Field(None, ge=1, le=10_000, description="prompts per round; default: the stage's "
                                                                 "max_concurrency, so a round fills it")
    shown: int = Field(8, ge=1, le=64, description="in-context tasks shown per prompt")
    shown_machine: int = Field(2, ge=0, le=64, description="of those, taken from the machine pool once it has them")
    max_rounds: int = Field(10, ge=1, le=10_000)

    @model_validator(mode="after")
    def _consistent(self) -> "InstructionsConfig":
        if self.shown_machine > self.shown:
            raise ValueError(f"shown_machine ({self.shown_machine}) cannot be more than shown ({self.shown})")
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) cannot be more than max_words ({self.max_words})")
        return self

    @property
    def target_rows(self) -> int:
        return self.target if isinstance(self.target, int) else self.target.rows

    @property
    def target_dataset(self) -> str:
        return "instructions" if isinstance(self.target, int) else self.target.dataset
    min_words: int = Field(4, ge=1, le=10_000)
    max_words: int = Field(150, ge=1, le=10_000)
    blacklist: list[str] = Field(default_factory=lambda: ["image", "images", "graph", "graphs", "picture", "pictures",
                                                          "file", "files", "map", "maps", "draw", "plot", "go to"])
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    evol: EvolConfig = Field(default_factory=EvolConfig)
    llm: LLMOverride | None = None


class ResponsesConfig(Strict):
    per_instruction: int = Field(2, ge=1, le=64, description="samples per instruction from each model")
    batch_size: int = Field(64, ge=1, le=100_000, description="instructions per batch; a batch goes on through judging and "
                                                  "pairs as soon as it passes its gate")
    models: list[LLMOverride] = Field(default_factory=list, description="generator models; empty: the stage's llm")
    principles: list[Literal["helpfulness", "honesty", "truthfulness"]] = Field(
        default_factory=list, description="UltraFeedback system principles, one drawn per sample; empty: none")
    dedup: DedupConfig = Field(default_factory=lambda: DedupConfig(method=None))
    llm: LLMOverride | None = None


class JudgeConfig(Strict):
    aspects: list[Aspect] = Field(default_factory=lambda: ["helpfulness", "honesty", "instruction_following", "truthfulness"],
                                  min_length=1)
    both_orders: bool = Field(False, description="judge again in reversed order and average, against position bias")
    llm: LLMOverride | None = None


class PairsConfig(Strict):
    strategy: Literal["best_vs_random", "best_vs_worst", "all_pairs"] = "best_vs_random"
    min_margin: float = Field(0.5, ge=0, le=4)
    format: Literal["string", "messages"] = "string"


GatedStage = Literal["instructions", "responses", "judgments", "pairs", "revisions", "cai_labels"]


class GateConfig(Strict):
    """Each batch is validated against `<suites>/<stage>.json`; a failing batch is quarantined or fails the run."""

    enabled: bool = True
    suites: str | None = Field(None, description="a directory of suite files; default: the suites alignflow ships")
    on_failure: OnFailure = "quarantine"
    stages: dict[GatedStage, OnFailure] = Field(default_factory=dict,
                                                description="per-stage policy overriding on_failure")

    def policy(self, stage: str) -> OnFailure:
        return self.stages.get(stage, self.on_failure)


class ConstitutionConfig(Strict):
    """Critique and revision against written principles (Constitutional AI, SL-CAI)."""

    enabled: bool = False
    file: str = "data/constitution.yaml"
    rounds: int = Field(2, ge=1, le=16)
    batch_size: int = Field(16, ge=1, le=100_000)
    confirm_with_judge: bool = Field(False, description="keep a revision pair only if the judge prefers the revision")
    llm: LLMOverride | None = None


class ReviewConfig(Strict):
    """A person approves a stage's output before it becomes a dataset: a sample of its rows is shown (a Prefect
    form, or `alignflow review RUN_DIR`), and the stage is approved, rejected, or rid of the rows listed."""

    stages: list[Literal["pairs"]] = Field(default_factory=list, description="stages whose output waits for a "
                                           "reviewer before the datasets are written; empty: no review")
    sample: int = Field(20, ge=1, le=1000, description="rows shown to the reviewer, drawn with the run's seed")
    timeout_h: float = Field(24.0, gt=0, le=24 * 90, description="hours to wait for a decision")
    on_timeout: Literal["reject", "approve"] = Field("reject", description="the decision when nobody answers in time")


class CacheConfig(Strict):
    enabled: bool = True
    dir: str = Field(default_factory=lambda: os.environ.get("ALIGNFLOW_CACHE_DIR", str(Path.home() / ".cache" / "alignflow")))


class PipelineConfig(Strict):
    store: str = "./runs"
    seeds: str = "data/seed_tasks.jsonl"
    seed: int | None = Field(None, description="sampling seed; default: derived from the run id, so every run "
                                               "draws new samples. Set it to repeat a run's requests (and, with the "
                                               "request cache, reuse their answers across run ids)")
    llm: LLMConfig = Field(default_factory=LLMConfig)
    instructions: InstructionsConfig = Field(default_factory=InstructionsConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    constitution: ConstitutionConfig = Field(default_factory=ConstitutionConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    prices: str | None = Field(None, description="a YAML price table whose entries override the shipped one")

    @model_validator(mode="after")
    def _seeds_exist(self) -> "PipelineConfig":
        if not Path(self.seeds).is_file():
            raise ValueError(f"seeds: {self.seeds} is a directory, not a file" if Path(self.seeds).is_dir()
                             else f"seeds file not found: {self.seeds}")
        return self

    def llm_for(self, stage: str) -> LLMConfig:
        return self.llm.merged(getattr(self, stage).llm)

    def llms(self) -> list[LLMConfig]:
        """Every model the pipeline asks: instructions, each generator, the judge, the constitution's reviser."""
        return [self.llm_for("instructions"), *self.generators(), self.llm_for("judge"),
                *([self.llm_for("constitution")] if self.constitution.enabled else [])]

    def generators(self) -> list[LLMConfig]:
        """The response models: each entry of `responses.models` over the responses stage's llm."""
        base = self.llm_for("responses")
        return [base.merged(m) for m in self.responses.models] or [base]


def _set_dotted(data: dict[str, Any], dotted: str) -> None:
    if "=" not in dotted:
        raise ConfigError(f"--set {dotted}: expected KEY=VALUE")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


_UNION_TAGS = {"int", "constrained-int", "float", "str", "bool", "dict", "list"}


def _describe(err: ValidationError) -> str:
    """The first error as `key.path: message`. For a key that takes one of several shapes (`target`: a number or
    a mapping), a shape the value does not have is not what went wrong, so its error is passed over."""
    errors = err.errors()
    first = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
    loc = [str(p) for p in first["loc"]
           if p != "[key]" and not (isinstance(p, str) and (p in _UNION_TAGS or p[:1].isupper()))]
    where = ".".join(loc) or "config"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if first["type"] == "string_pattern_mismatch" and first.get("ctx", {}).get("pattern") == URL:
        return f"{where}: {first['input']!r} is not an http:// or https:// URL"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if loc else msg


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config, apply `--set` overrides, validate. Relative paths resolve from the working directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {getattr(exc, 'strerror', None) or exc.reason}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for item in overrides or []:
        _set_dotted(data, item)
    return parse_config(data, source=str(path))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`, key by key at every depth: a partial config changes only what it names."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def overridden(base: dict[str, Any], partial: dict[str, Any], dotted: list[str] | None = None,
               source: str = "config") -> PipelineConfig:
    """A config from `base` with a partial config deep-merged over it, then dotted `KEY=VALUE` overrides."""
    data = deep_merge(base, partial)
    for item in dotted or []:
        _set_dotted(data, item)
    return parse_config(data, source)


def parse_config(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
