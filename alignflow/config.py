"""Pipeline configuration: YAML validated by pydantic, with dotted `--set` overrides.

Unknown keys and bad values are errors that name the key. API keys never live here: `api_key_env`
names the environment variable that holds one.
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

Provider = Literal["openai", "anthropic", "local"]
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
DEFAULT_MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest", "local": "SmolLM2-135M-Instruct"}


class ConfigError(Exception):
    """A user error in the configuration: printed as one line."""


# Titles the Prefect form shows; any other field is titled from its name ("max_words" -> "Max words").
TITLES = {"llm": "LLM", "rpm": "Requests per minute", "tpm": "Tokens per minute",
          "input_tpm": "Input tokens per minute", "output_tpm": "Output tokens per minute", "timeout_s": "Timeout (seconds)", "base_url": "Base URL",
          "api_key_env": "API key variable", "batch_poll_s": "Batch poll interval (seconds)",
          "budget_usd": "Budget (USD)", "max_tokens": "Max tokens", "timeout_h": "Timeout (hours)",
          "shown_machine": "Shown from the machine pool", "both_orders": "Judge in both orders",
          "min_margin": "Minimum margin", "confirm_with_judge": "Confirm with the judge", "on_timeout": "On timeout",
          "on_failure": "On failure", "dir": "Directory", "evol": "Evol-Instruct", "seed": "Sampling seed",
          "shingle_size": "Shingle size", "per_round": "Per round", "ask": "Ask in the UI"}


def _title(name: str, _info: Any) -> str:
    return TITLES.get(name) or name.replace("_", " ").capitalize()


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, field_title_generator=_title)


# no user:password@ before the host, so a deployment's API refuses a credential in a URL before it stores it
URL = r"^https?://[^\s/$.?#@][^\s/?#@]*([/?#]\S*)?$"


class LLMConfig(Strict):
    """The model a stage asks, and how: provider, endpoint, limits, retries, sampling."""

    provider: Provider = Field("local", description="`openai` (any OpenAI-compatible server, with `base_url`), "
                                                    "`anthropic`, or `local` (the bundled model, on the CPU)")
    model: str | None = Field(None, max_length=256,  # a model name; far longer would go in every request
                              description="empty: per provider, `gpt-4o-mini`, `claude-3-5-haiku-latest` or the "
                                          "bundled `SmolLM2-135M-Instruct` (a `.gguf` path or model directory "
                                          "also works)")
    base_url: str | None = Field(None, pattern=URL, description="an OpenAI- or Anthropic-compatible endpoint, "
                                                                "http(s)://; empty: the provider's")
    api_key_env: str | None = Field(None, description="the environment variable holding the API key; empty: "
                                                      "`OPENAI_API_KEY` or `ANTHROPIC_API_KEY`")
    max_concurrency: int = Field(8, ge=1, le=1024, description="requests in flight at once to the endpoint "
                                                               "(provider, base URL, model, key), whichever batch, "
                                                               "stage or generator sends them")
    rpm: int | None = Field(None, ge=1, le=10_000_000, description="requests per minute to the endpoint, held in "
                                                                   "every 60-second window; empty: no limit")
    tpm: int | None = Field(None, ge=1, le=10_000_000_000, description="tokens (in + out) per minute; empty: no limit")
    input_tpm: int | None = Field(None, ge=1, le=10_000_000_000, description="input tokens per minute (Anthropic "
                                                                             "limits them apart); empty: no limit")
    output_tpm: int | None = Field(None, ge=1, le=10_000_000_000, description="output tokens per minute; empty: "
                                                                              "no limit")
    limit_name: str | None = Field(None, description="a Prefect global concurrency limit every request holds a slot "
                                                     "of, shared by every run on the server; `auto`: a name derived "
                                                     "from the endpoint; create it with `alignflow limits create`")
    timeout_s: float = Field(120.0, gt=0, le=3600, description="per request")
    max_retries: int = Field(6, ge=0, le=20, description="retries on 408/409/429/5xx and timeouts, exponential "
                                                         "backoff with jitter, `Retry-After` honoured")
    temperature: float = Field(0.7, ge=0, le=2, description="sampling temperature")
    max_tokens: int = Field(512, ge=1, le=1_000_000, description="the longest answer, in tokens")
    structured_retries: int = Field(2, ge=0, le=10, description="asks again when a structured answer does not "
                                                                "validate; then the row fails, keeping the raw output")
    mode: Literal["live", "batch"] = Field("live", description="`batch`: through the provider's Batch API, at its "
                                                               "discount, answers within hours")
    budget_usd: float | None = Field(None, gt=0, le=1_000_000, description="the run stops, resumably (exit code 4), "
                                                                           "before it could spend more (priced by "
                                                                           "`prices`); empty: no budget")
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
        if key != key.strip():  # sent as it is, it is refused, and the server's answer would not say why
            what = ("holds only whitespace" if not key.strip() else
                    "has a trailing newline" if "\n" in key[len(key.rstrip()):] else "has whitespace around the key")
            raise ConfigError(f"{env} {what}: set it to the key alone, e.g. export {env}=\"$(tr -d '[:space:]' "
                              "< keyfile)\"")
        return key

    def merged(self, override: "LLMOverride | None") -> "LLMConfig":
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_none=True))


def _every_field_optional(model: type[BaseModel], name: str, doc: str, leave_out: tuple[str, ...]) -> type[Strict]:
    """`model` with each field optional and empty by default, its bounds and description kept: an override that
    names only what it changes."""
    fields = {}
    for key, info in model.model_fields.items():
        if key in leave_out:
            continue
        field = copy.copy(info)
        field.default, field.default_factory = None, None
        fields[key] = (info.annotation | None, field)
    return create_model(name, __base__=Strict, __doc__=doc, __module__=__name__, **fields)


LLMOverride = _every_field_optional(
    LLMConfig, "LLMOverride", "Any subset of the LLM settings; a stage's `llm` overrides the top-level one key by key.",
    leave_out=("budget_usd",))  # the budget is the run's, not a stage's


DedupMethod = Literal["exact", "minhash", "rouge", "semantic"]
OnFailure = Literal["quarantine", "fail"]
Aspect = Literal["helpfulness", "honesty", "instruction_following", "truthfulness", "overall"]
Evolution = Literal["deepen", "concretize", "constrain", "reasoning", "breadth"]
UF_PRINCIPLES = ("helpfulness", "honesty", "truthfulness")
SELF_INSTRUCT_BLACKLIST = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                           "draw", "plot", "go to"]


class DedupConfig(Strict):
    """Near-duplicate removal against everything the run kept; `threshold` is the similarity above which a row is a
    duplicate."""

    method: DedupMethod | None = Field("rouge", description="`exact`, `minhash`, `rouge` (Self-Instruct's ROUGE-L), "
                                                            "`semantic` (embeddings), or empty: none")
    threshold: float | None = Field(None, gt=0, le=1, description="empty: per method, rouge 0.7, minhash 0.8, "
                                                                  "semantic 0.9")
    shingle: Literal["word", "char"] = Field("word", description="minhash: shingles of words or of characters")
    shingle_size: int = Field(3, ge=1, le=32, description="minhash: words or characters per shingle")
    permutations: int = Field(128, ge=8, le=4096, description="minhash: hash permutations per signature")
    bands: int = Field(32, ge=1, le=4096, description="minhash: LSH bands (must divide permutations)")

    @model_validator(mode="after")
    def _bands_split_the_permutations(self) -> "DedupConfig":
        if self.permutations % self.bands:
            raise ValueError(f"bands ({self.bands}) must divide permutations ({self.permutations})")
        return self


class EvolConfig(Strict):
    """Evol-Instruct: rewrite accepted instructions into harder (in-depth) or new same-domain (breadth) ones."""

    enabled: bool = Field(False, description="evolve accepted instructions each round")
    per_round: int = Field(4, ge=1, le=10_000, description="accepted instructions evolved per round")
    evolutions: list[Evolution] = Field(["deepen", "concretize", "constrain", "reasoning", "breadth"], min_length=1,
                                        description="the rewrites drawn from: `deepen`, `concretize`, `constrain`, "
                                                    "`reasoning` (in depth), `breadth`")


class DatasetTarget(Strict):
    """Run until this many rows of a final dataset have passed every gate."""

    dataset: Literal["instructions", "dpo", "sft"] = Field(description="the dataset counted")
    rows: int = Field(ge=1, le=10_000_000, description="rows of it to make")


class InstructionsConfig(Strict):
    """Self-Instruct rounds: prompts with in-context tasks, filters, novelty dedup, until the target is made."""

    target: Annotated[int, Field(ge=1, le=10_000_000)] | DatasetTarget = Field(
        20, description="what the run makes: N kept instructions (the first N go on to responses), or "
                        "`{dataset: dpo, rows: N}` (also `sft`, `instructions`): rounds go on until N rows of that "
                        "dataset passed every gate")
    max_tokens: int | None = Field(None, ge=1, le=10**13, description="a budget: no new round once the run has used "
                                                                      "this many tokens (all stages); empty: none")
    per_prompt: int = Field(4, ge=1, le=20, description="new tasks asked for in one prompt")
    prompts_per_round: int | None = Field(None, ge=1, le=10_000, description="prompts per round; empty: the stage's "
                                                                             "max_concurrency, so a round fills it")
    shown: int = Field(8, ge=1, le=64, description="in-context tasks shown per prompt")
    shown_machine: int = Field(2, ge=0, le=64, description="of those, taken from the machine pool once it has them")
    max_rounds: int = Field(10, ge=1, le=10_000, description="a budget: no new round after this many; a target not "
                                                             "reached is reported")
    min_words: int = Field(4, ge=1, le=10_000, description="shorter instructions are rejected, with the reason")
    max_words: int = Field(150, ge=1, le=10_000, description="longer instructions are rejected, with the reason")
    blacklist: list[str] = Field(SELF_INSTRUCT_BLACKLIST, description="words an instruction is rejected for "
                                                                      "(Self-Instruct's list: tasks a text model "
                                                                      "cannot do)")
    curate: list[str] = Field([], description="your own filters, after the ones above and before dedup: "
                                              "`module:function` names (the working directory is importable), each "
                                              "called with a row and returning True to keep it or the reason to "
                                              "reject it")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="novelty against every instruction kept")
    evol: EvolConfig = Field(default_factory=EvolConfig, description="Evol-Instruct rewrites")
    llm: LLMOverride | None = Field(None, description="this stage's model: any LLM keys over the top-level ones")

    @model_validator(mode="after")
    def _consistent(self) -> "InstructionsConfig":
        if self.shown_machine > self.shown:
            raise ValueError(f"shown_machine ({self.shown_machine}) cannot be more than shown ({self.shown})")
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) cannot be more than max_words ({self.max_words})")
        self.check_curate(self.curate)
        return self

    @staticmethod
    def check_curate(paths: list[str]) -> None:
        """Each curator named `module:function` (a dotted module, a colon, a function name): a typo is an error when
        the config loads; whether it imports is checked before the run's first request."""
        for path in paths:
            module, colon, name = path.partition(":")
            if not (colon and name.isidentifier() and all(part.isidentifier() for part in module.split("."))):
                raise ValueError(f"curate: {path!r} is not module:function (a dotted module name, a colon, a "
                                 f"function name)")

    @property
    def target_rows(self) -> int:
        return self.target if isinstance(self.target, int) else self.target.rows

    @property
    def target_dataset(self) -> str:
        return "instructions" if isinstance(self.target, int) else self.target.dataset


class ResponsesConfig(Strict):
    """Answers to each kept instruction from one or more generator models."""

    per_instruction: int = Field(2, ge=1, le=64, description="distinct samples per instruction from each model (each "
                                                             "its own request)")
    batch_size: int = Field(64, ge=1, le=100_000, description="instructions per batch; batch n of responses, "
                                                              "judgments and pairs covers the same instructions and "
                                                              "goes on as soon as it passes its gate")
    models: list[LLMOverride] = Field([], description="generator models, each any LLM keys over this stage's, e.g. "
                                                      "`[{model: a}, {provider: anthropic, model: b}]`; empty: the "
                                                      "stage's model")
    principles: list[Literal["helpfulness", "honesty", "truthfulness"]] = Field(
        [], description="UltraFeedback system principles, one drawn per sample; empty: none")
    curate: list[str] = Field([], description="your own filters, on every non-empty response: `module:function` "
                                              "names (the working directory is importable), each called with a row "
                                              "and returning True to keep it or the reason to reject it")
    llm: LLMOverride | None = Field(None, description="this stage's model: any LLM keys over the top-level ones")

    @model_validator(mode="after")
    def _curators_named(self) -> "ResponsesConfig":
        InstructionsConfig.check_curate(self.curate)
        return self


class JudgeConfig(Strict):
    """The AI judge (UltraFeedback): every response of an instruction rated 1-5 per aspect, with a rationale."""

    aspects: list[Aspect] = Field(["helpfulness", "honesty", "instruction_following", "truthfulness"], min_length=1,
                                  description="one call per aspect, showing all responses of an instruction shuffled: "
                                              "`helpfulness`, `honesty`, `instruction_following`, `truthfulness`, "
                                              "`overall`")
    both_orders: bool = Field(False, description="judge again in reversed order and average, against position bias")
    inconsistent_at: float = Field(2.0, gt=0, le=4, description="with `overall` among the aspects: a response whose "
                                                                "`overall` differs from the mean of the other aspects "
                                                                "by this much is flagged `inconsistent` (Notus)")
    llm: LLMOverride | None = Field(None, description="the judge model: any LLM keys over the top-level ones")


class PairsConfig(Strict):
    """Preference pairs from the judge's ratings."""

    strategy: Literal["best_vs_random", "best_vs_worst", "all_pairs"] = Field(
        "best_vs_random", description="`best_vs_random` (UltraFeedback binarized), `best_vs_worst`, `all_pairs`")
    min_margin: float = Field(0.5, ge=0, le=4, description="pairs whose rating difference is below this are rejected, "
                                                           "with the reason")
    format: Literal["string", "messages"] = Field("string", description="`messages`: TRL's conversational preference "
                                                                        "format")
    rank_by: Literal["aspects", "overall", "helpfulness", "honesty", "instruction_following", "truthfulness"] = Field(
        "aspects", description="what ranks the responses: `aspects`, the mean of the judged aspects other than "
                               "`overall` (as the curated UltraFeedback does); `overall`; or one aspect")


GatedStage = Literal["instructions", "responses", "judgments", "pairs", "revisions", "cai_labels"]


class BenchmarkFile(Strict):
    """A benchmark whose items must not appear in the data: JSONL (or .jsonl.gz) or Parquet, one item per row."""

    path: str = Field(description="the file, e.g. `../shared/data/gsm8k_test.jsonl`")
    column: str | None = Field(None, description="its text column; empty: `gate.decontaminate.column`")
    name: str | None = Field(None, description="the name rejected rows' reasons give; empty: the file's stem")


class DecontaminateConfig(Strict):
    """Word n-gram overlap with benchmark items (the GPT-3 / NeMo Curator method): a row sharing one is rejected."""

    benchmarks: list[BenchmarkFile] = Field([], description="benchmark files (a path, or `{path, column, name}`); "
                                                            "empty: no decontamination")
    column: str | None = Field(None, description="the text column of each file; empty: the first of question, "
                                                 "prompt, problem, text, instruction, input it has")
    ngram: int = Field(13, ge=3, le=64, description="words per n-gram, after lowercasing and dropping punctuation")
    min_ngram: int = Field(8, ge=1, le=64, description="an item shorter than `ngram` words is one n-gram of its own "
                                                       "length, if it has at least this many words")
    min_overlap: float = Field(0.0, ge=0, lt=1, description="the share of an item's n-grams a row must share to be "
                                                            "contaminated; 0: any one")

    @model_validator(mode="before")
    @classmethod
    def _paths(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("benchmarks"), list):
            data = {**data, "benchmarks": [{"path": b} if isinstance(b, str) else b for b in data["benchmarks"]]}
        return data


class GateConfig(Strict):
    """Each batch is validated against `<suites>/<stage>.json`; a failing batch is quarantined or fails the run."""

    enabled: bool = Field(True, description="validate every batch; a gated stage without its suite is an error "
                                            "naming the path")
    suites: str | None = Field(None, description="a directory of suite files; empty: the suites alignflow ships")
    on_failure: OnFailure = Field("quarantine", description="`quarantine`: the batch is held and the run goes on; "
                                                            "`fail`: the flow run fails naming the expectations")
    stages: dict[GatedStage, OnFailure] = Field({}, description="per-stage policy overriding on_failure, e.g. "
                                                                "`{responses: fail}`")
    ask: bool = Field(True, description="in a run started from a deployment, wait (suspended: no worker held) for a "
                                        "person to release or drop its quarantined batches in the Prefect UI before "
                                        "the datasets are written; off: it ends `Completed with quarantine`")

    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    max_contaminated_share: float = Field(0.05, ge=0, le=1, description="a batch with a larger share of contaminated "
                                                                        "rows is quarantined, not only thinned")
    pii: Literal["reject", "redact", "off"] = Field("redact", description="personal data and secrets in the texts "
                                                                          "(e-mail, phone, card, IBAN, IP, API keys, "
                                                                          "private keys): `redact` replaces each with "
                                                                          "a typed placeholder and records it; "
                                                                          "`reject` rejects the row")
    max_pii_share: float = Field(0.25, ge=0, le=1, description="a batch with a larger share of rows holding personal "
                                                               "data or secrets is quarantined")

    def policy(self, stage: str) -> OnFailure:
        return self.stages.get(stage, self.on_failure)


class ConstitutionConfig(Strict):
    """Critique and revision against written principles (Constitutional AI, SL-CAI)."""

    enabled: bool = Field(False, description="critique and revise the responses by drawn principles")
    file: str = Field("data/constitution.yaml", description="the principles; the paper's JSON loads too")
    rounds: int = Field(2, ge=1, le=16, description="critique-revision rounds per answer")
    batch_size: int = Field(16, ge=1, le=100_000, description="answers per batch")
    confirm_with_judge: bool = Field(False, description="keep a revision pair only if the judge prefers the revision "
                                                        "in both orders")
    llm: LLMOverride | None = Field(None, description="the revising model: any LLM keys over the top-level ones")


ReviewedStage = Literal["instructions", "responses", "judgments", "pairs", "revisions"]


class ReviewConfig(Strict):
    """A person reviews a stage's output before the next stage pays for it, or before the datasets: a sample of its
    rows is shown (a Prefect form, or `alignflow review RUN_DIR`), with a decision per row (pairs: keep, drop, swap,
    tie; instructions: keep, drop, edit) and one for the rest of the stage (approve or reject)."""

    stages: list[ReviewedStage] = Field([], description="stages whose output waits for a reviewer: `instructions` "
                                                        "stops the run before any response is asked for; empty: no "
                                                        "review")
    sample: int = Field(20, ge=1, le=1000, description="rows shown to the reviewer, drawn with the run's seed")
    sample_by: Literal["random", "uncertain"] = Field(
        "uncertain", description="pairs: `uncertain` draws most of the sample from the pairs the judge is least sure "
                                 "of (it flipped between orders, `overall` contradicts the aspects, the aspects "
                                 "disagree, the margin is small); `random` draws all at random. Other stages: random")
    random_share: float = Field(0.25, ge=0, le=1, description="with `uncertain`: the share of the sample drawn at "
                                                              "random, from which the judge's agreement with people "
                                                              "is estimated without bias")
    min_agreement: float | None = Field(None, gt=0, le=1, description="hold the datasets (exit 3) when the lower 95% "
                                                                      "bound of the judge's agreement with the "
                                                                      "reviewer falls below this")
    timeout_h: float = Field(24.0, gt=0, le=24 * 90, description="hours to wait for a decision")
    on_timeout: Literal["reject", "approve"] = Field("reject", description="the decision when nobody answers in time")


class CacheConfig(Strict):
    """The local request cache: a warm one answers repeated requests; a run resumes without it."""

    enabled: bool = Field(True, description="cache every answer by its request")
    dir: str | None = Field(None, description="empty: `$ALIGNFLOW_CACHE_DIR`, else `~/.cache/alignflow`, on the "
                                              "machine that runs the batch")

    @property
    def location(self) -> str:
        return self.dir or os.environ.get("ALIGNFLOW_CACHE_DIR") or str(Path.home() / ".cache" / "alignflow")


class DaskConfig(Strict):
    """A Dask cluster for the batch tasks (prefect-dask's DaskTaskRunner). Tasks pass keys, not rows: each batch
    reads its input from the store and writes its output there, so the store must be one every worker reaches."""

    address: str | None = Field(None, description="a running scheduler, e.g. `tcp://10.0.0.5:8786`, whose workers "
                                                  "have alignflow installed and the run's env (API keys, `AWS_*`, "
                                                  "`PREFECT_API_URL`); empty: a LocalCluster on this machine")
    workers: int = Field(2, ge=1, le=256, description="LocalCluster: worker processes")
    threads: int = Field(8, ge=1, le=256, description="LocalCluster: batches each worker runs at once")


class DaskRunner(Strict):
    """`runner: {dask: {...}}`."""

    dask: DaskConfig = Field(default_factory=DaskConfig, description="the cluster")


class PipelineConfig(Strict):
    """Every setting of a run. Started from a deployment, the keys given are merged over the deployment's config."""

    store: str = Field("./runs", description="where runs go: a local path (relative to the project) or "
                                             "`s3://bucket/prefix` (credentials and endpoint from the `AWS_*` "
                                             "variables)")
    seeds: str = Field("data/seed_tasks.jsonl", description="seed tasks: Self-Instruct JSONL (`instruction`, optional "
                                                            "`instances`) or one instruction per line")
    seed: int | None = Field(None, description="the sampling seed of every request and draw; empty: derived from the "
                                               "run id, so every run draws new samples. Set it to repeat a run's "
                                               "requests (and, with the cache, reuse their answers across run ids)")
    llm: LLMConfig = Field(default_factory=LLMConfig, description="the model every stage asks unless it names its own")
    instructions: InstructionsConfig = Field(default_factory=InstructionsConfig, description="Self-Instruct and "
                                                                                             "Evol-Instruct rounds")
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig, description="the generator models")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="the AI judge")
    pairs: PairsConfig = Field(default_factory=PairsConfig, description="preference pairs")
    gate: GateConfig = Field(default_factory=GateConfig, description="the data-quality gate on every batch")
    constitution: ConstitutionConfig = Field(default_factory=ConstitutionConfig, description="Constitutional AI "
                                                                                             "critique and revision")
    review: ReviewConfig = Field(default_factory=ReviewConfig, description="a person's review before release")
    cache: CacheConfig = Field(default_factory=CacheConfig, description="the local request cache")
    prices: str | None = Field(None, description="a YAML price table (USD per 1M tokens per provider and model) whose "
                                                 "entries override the shipped `alignflow/llm/prices.yaml`")
    runner: Literal["threads", "dask"] | DaskRunner = Field(
        "threads", description="where the batch tasks run: `threads` in the flow's process, `dask` on a LocalCluster, "
                               "`{dask: {address: tcp://...}}` on a running cluster")

    @model_validator(mode="after")
    def _seeds_exist(self) -> "PipelineConfig":
        try:
            is_file, is_dir = Path(self.seeds).is_file(), Path(self.seeds).is_dir()
        except OSError as exc:  # a name too long for the file system
            raise ValueError(f"seeds: cannot read {abbreviated(self.seeds)}: {exc.strerror}") from None
        if not is_file:
            raise ValueError(f"seeds: {self.seeds} is a directory, not a file" if is_dir
                             else f"seeds file not found: {self.seeds}")
        return self

    @model_validator(mode="after")
    def _ranked_by_a_judged_aspect(self) -> "PipelineConfig":
        if self.pairs.rank_by != "aspects" and self.pairs.rank_by not in self.judge.aspects:
            raise ValueError(f"pairs.rank_by: {self.pairs.rank_by} is not among judge.aspects "
                             f"({', '.join(self.judge.aspects)})")
        if "revisions" in self.review.stages and not self.constitution.enabled:
            raise ValueError("review.stages: revisions needs constitution.enabled")
        return self

    @property
    def dask(self) -> DaskConfig | None:
        """The Dask cluster the batches run on; None: the flow's own threads."""
        if self.runner == "threads":
            return None
        return DaskConfig() if self.runner == "dask" else self.runner.dask

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


def abbreviated(text: str, limit: int = 120) -> str:
    """`text` as a one-line message quotes it: a long value (a pasted file, a 1 MB `--set`) cut to its start."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


# what a prompt or a Parquet file must not carry: control characters but tab and line ends (NUL ends C strings, the
# others are invisible) and lone surrogates (no character at all: not UTF-8, a broken `\ud800` escape)
_UNFIT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def unfit_character(text: str) -> str | None:
    """The first character of `text` no prompt or Parquet file should carry, described with its position; or None."""
    found = _UNFIT.search(text)
    if found is None:
        return None
    code = ord(found[0])
    what = "a NUL character" if code == 0 else "a lone surrogate" if code >= 0xD800 else "a control character"
    return f"{what} (U+{code:04X}) at character {found.start() + 1:,}"


MAX_DEPTH = 32  # a config is a few sections deep; far deeper is a mistake, and parsers recurse on it
MAX_VALUE_CHARS = 4096  # the longest path Linux takes; no config value (a path, a name, a URL) is longer
_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]*@")  # scheme://user:password@host


def _check_values(value: Any, where: list[str]) -> None:
    """Every value of a config as plain as it must be: nested at most MAX_DEPTH levels, each text at most
    MAX_VALUE_CHARS with no unfit character, and no URL with a user name or password (a key goes in the
    environment: `api_key_env` names its variable)."""
    key = abbreviated(".".join(where)) or "config"
    if len(where) > MAX_DEPTH:
        raise ConfigError(f"{key}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        for name, item in value.items():
            if problem := unfit_character(str(name)):
                raise ConfigError(f"{key}: the key {abbreviated(repr(name))} holds {problem}")
            _check_values(item, [*where, str(name)])
    elif isinstance(value, list):
        for number, item in enumerate(value):
            _check_values(item, [*where, str(number)])
    elif isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            raise ConfigError(f"{key}: {len(value):,} characters; a config value is at most {MAX_VALUE_CHARS:,}")
        if problem := unfit_character(value):
            raise ConfigError(f"{key}: holds {problem}")
        if _USERINFO.match(value):
            instead = (f"put the key in an environment variable and name it in "
                       f"{'.'.join([*where[:-1], 'api_key_env'])}" if where[-1:] == ["base_url"]
                       else "credentials come from the environment (AWS_* for an s3:// store)")
            raise ConfigError(f"{key}: the URL holds a user name or password (user:…@host): {instead}; a config "
                              "never holds a secret")


def _set_dotted(data: dict[str, Any], dotted: str) -> None:
    if "=" not in dotted:
        raise ConfigError(f"--set {abbreviated(dotted)}: expected KEY=VALUE")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    key = abbreviated(key.strip())  # as messages name it
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {abbreviated(part)} is not a section")
        node = child
    if problem := unfit_character(raw):
        raise ConfigError(f"--set {key}: the value holds {problem}")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"--set {key}: the value is nested too deep") from None


_UNION_TAGS = {"int", "constrained-int", "float", "str", "bool", "dict", "list"}


def _word_tag(part: Any) -> bool:
    """The Literal branch of a union, as pydantic names it in an error's location (`literal['threads','dask']`)."""
    return isinstance(part, str) and part.startswith("literal[")


def _close_key(loc: list[str]) -> str:
    """The known keys nearest an unknown one (a typo), as dotted paths (`llm.mode or llm.model`), or ''."""
    model: Any = PipelineConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        kinds = (field.annotation, *get_args(field.annotation)) if field else ()
        model = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
        if model is None:
            return ""
    found = difflib.get_close_matches(loc[-1], list(model.model_fields), n=2)
    return " or ".join(".".join([*loc[:-1], key]) for key in found)


def _describe(err: ValidationError) -> str:
    """The first error as `key.path: message`. For a key that takes one of several shapes (`target`: a number or
    a mapping), a shape the value does not have is not what went wrong, so its error is passed over."""
    errors = err.errors()
    shaped = [e for e in errors if not e["type"].endswith("_type")] or errors
    # a word-or-section key (`runner: dask` or `runner: {dask: {...}}`): a section's error says more than the word's
    first = next((e for e in shaped if not (isinstance(e["input"], dict) and any(map(_word_tag, e["loc"])))),
                 shaped[0])
    loc = [str(p) for p in first["loc"]
           if p != "[key]" and not (isinstance(p, str) and (p in _UNION_TAGS or p[:1].isupper() or _word_tag(p)))]
    where = abbreviated(".".join(loc)) or "config"
    if first["type"] == "extra_forbidden":
        near = _close_key(loc)
        return f"{where}: unknown key" + (f" (did you mean {near}?)" if near else "")
    if first["type"] == "string_pattern_mismatch" and first.get("ctx", {}).get("pattern") == URL:
        given = "" if "@" in first["input"] else f"{abbreviated(first['input'])!r} "  # no password is echoed
        return f"{where}: {given}is not an http:// or https:// URL"
    if first["type"] == "string_type" and isinstance(first["input"], (dict, list)):
        shape = "a mapping" if isinstance(first["input"], dict) else "a list"
        return f"{where}: expected text, got {shape} (quote a value that holds ': ' or starts with '[' or '{{')"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if loc else msg


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config, apply `--set` overrides, validate. Relative paths resolve from the working directory."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ConfigError(f"config file not found: {abbreviated(str(path))}")
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {abbreviated(str(path))}: "
                          f"{getattr(exc, 'strerror', None) or exc.reason}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deep)") from None
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
        _check_values(data, [])
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
