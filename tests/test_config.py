import pytest

from alignflow.config import ConfigError, load_config

QUICKSTART = "configs/quickstart.yaml"


def test_quickstart_loads_with_defaults():
    config = load_config(QUICKSTART)
    assert config.llm.provider == "local"
    assert config.responses.per_instruction == 2
    assert config.llm_for("judge").temperature == 0.0
    assert config.llm_for("responses").temperature == 0.8


def test_set_overrides_any_key_with_typed_values():
    config = load_config(QUICKSTART, ["llm.provider=openai", "llm.rpm=60", "judge.llm.model=judge-x",
                                      "instructions.target=1000"])
    assert config.llm.provider == "openai" and config.llm.rpm == 60
    assert config.instructions.target == 1000
    assert config.llm_for("judge").model_name == "judge-x"
    assert config.llm_for("responses").model_name == "gpt-4o-mini"


@pytest.mark.parametrize("override, message", [
    ("llm.providr=openai", "llm.providr: unknown key"),
    ("nope=1", "nope: unknown key"),
    ("llm.provider=bard", "llm.provider:"),
    ("responses.per_instruction=0", "responses.per_instruction:"),
    ("seeds=missing.jsonl", "seeds file not found: missing.jsonl"),
    ("llm.rpm", "expected KEY=VALUE"),
    ("runner=spark", "runner:"),
    ("runner.dask.workers=0", "runner.dask.workers:"),
])
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_the_runner_is_threads_a_local_cluster_or_a_running_one():
    assert load_config(QUICKSTART).dask is None
    assert load_config(QUICKSTART, ["runner=dask"]).dask.address is None
    cluster = load_config(QUICKSTART, ["runner.dask.address=tcp://10.0.0.5:8786"]).dask
    assert (cluster.address, cluster.workers) == ("tcp://10.0.0.5:8786", 2)


def test_api_key_comes_from_the_named_environment_variable(monkeypatch):
    config = load_config(QUICKSTART, ["llm.provider=anthropic", "llm.api_key_env=MY_KEY"])
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ConfigError, match="MY_KEY"):
        config.llm.api_key()
    monkeypatch.setenv("MY_KEY", "sk-secret")
    assert config.llm.api_key() == "sk-secret"
    assert "sk-secret" not in config.model_dump_json()


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("nope.yaml")


def test_every_setting_is_described_and_the_readme_table_is_the_generated_one():
    from pathlib import Path

    from alignflow.cli import reference

    assert all(meaning for _, _, meaning in reference.rows())
    assert reference.block() in Path("README.md").read_text(), "run: python -m alignflow.cli.reference README.md"


def test_a_partial_config_deep_merges_and_dotted_overrides_come_last():
    from alignflow.config import overridden

    base = {"store": "./runs", "llm": {"provider": "local", "max_tokens": 160}, "judge": {"aspects": ["honesty"]}}
    config = overridden(base, {"llm": {"provider": "openai", "model": "m"}}, ["llm.max_tokens=64", "seed=3"])
    assert (config.llm.provider, config.llm.model, config.llm.max_tokens, config.seed) == ("openai", "m", 64, 3)
    assert config.judge.aspects == ["honesty"] and config.store == "./runs"
    assert base["llm"] == {"provider": "local", "max_tokens": 160}  # the deployment's config is not changed
