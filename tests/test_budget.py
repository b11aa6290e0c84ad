"""`llm.budget_usd` when a run's batches run in several processes: their ledgers draw on one pool, the run's budget
kept in a Prefect global concurrency limit on a real Prefect server, and together never reserve more than it."""
import asyncio
import threading
from collections.abc import Iterator

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from alignflow.config import load_config
from alignflow.engine.lease import Lease
from alignflow.engine.run import Run
from alignflow.llm.ledger import BudgetReached, Ledger
from alignflow.llm.prices import load_prices
from tasks.limits import PrefectBudget, budget_limit, run_budget

BUDGET = 1.0
PRICE = 1000  # dollars per million tokens: $0.001 a token
MOST, COST = 30, 20  # tokens a request may cost at most, and does


@pytest.fixture
def run(tmp_path, prefect_server) -> Iterator[Run]:
    """A run on Dask with a budget, its lease held, as its flow holds it: its ledgers draw on the run's pool."""
    prices = tmp_path / "prices.yaml"
    prices.write_text(f"openai:\n  gen-model: {{input: {PRICE}, output: {PRICE}}}\n")
    config = load_config("configs/quickstart.yaml", [f"store={tmp_path / 'store'}", "runner=dask",
                                                     f"llm.budget_usd={BUDGET}", f"prices={prices}"])
    run = Run(config, "b1")
    lease = Lease(run.store, "b1")
    lease.acquire()
    run.held_by(lease.token)
    yield run
    lease.release()


def _spend(ledger: Ledger, spent: list[float]) -> None:
    """Requests one after another until the budget stops them, as a worker's endpoints' event loop sends them."""
    async def go() -> None:
        while True:
            try:
                reserved = ledger.reserve("openai", "gen-model", MOST, 0, False)
            except BudgetReached:
                return
            await asyncio.sleep(0)
            ledger.settle(reserved, "openai", "gen-model", COST, 0, False)
            spent.append(COST * PRICE / 1e6)

    asyncio.run(go())


def test_processes_drawing_on_one_pool_spend_no_more_than_the_budget_together(run):
    """Four ledgers (as four workers would have), two event loops each, spend at once until stopped: what they spent
    together is within the budget, and short of it by less than what each may hold unspent."""
    prices = load_prices(run.config.prices)
    with run_budget(run):
        ledgers = [Ledger(BUDGET, 0.0, prices, PrefectBudget(run.url, run.writer, BUDGET)) for _ in range(4)]
        spent: list[float] = []
        loops = [threading.Thread(target=_spend, args=(ledger, spent)) for ledger in ledgers for _ in range(2)]
        for loop in loops:
            loop.start()
        for loop in loops:
            loop.join()
        with pytest.raises(BudgetReached, match=r"^llm.budget_usd \$1.00 reached: the run's processes spent or set "
                                                r"aside \$(0\.9\d+|1\.0000) of it$"):
            ledgers[0].reserve("openai", "gen-model", MOST, 0, False)
    most, allowance = MOST * PRICE / 1e6, BUDGET / 32
    print(f"{len(spent)} requests, ${sum(spent):.4f} spent of ${BUDGET:.2f}")
    assert sum(spent) <= BUDGET
    assert sum(spent) > BUDGET - len(ledgers) * (allowance + most)
    assert PrefectBudget(run.url, run.writer, BUDGET).spent() is None  # the limit is gone with the flow


def test_the_pool_counts_from_what_the_store_says_the_run_spent(run):
    """A resume after a killed writer: the run's finished batches cost $0.75 of it already, so a ledger may spend only
    what is left; the killed writer's limit is deleted."""
    run.store.write_json("b1/responses/checkpoints/batch-00000.json", {
        "stage": "responses", "number": 0, "counts": {"kept": 1, "rejected": 0, "failed": 0, "quarantine": 0},
        "by_model": {"openai:gen-model": {"provider": "openai", "model": "gen-model", "batch": False,
                                          "requests": 1, "input_tokens": 750, "output_tokens": 0}}})
    killed = budget_limit(run.url, "a-killed-writer")
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=killed, limit=10, active_slots=3))
    with run_budget(run):
        assert PrefectBudget(run.url, run.writer, BUDGET).spent() == pytest.approx(0.75)
        assert PrefectBudget(run.url, "a-killed-writer", BUDGET).spent() is None
        spent: list[float] = []
        _spend(run.ledger, spent)  # the run's own ledger, as the flow's process and each worker make it
    assert 0.25 - 2 * MOST * PRICE / 1e6 < sum(spent) <= 0.25
    assert budget_limit(run.url, run.writer).startswith("alignflow-budget-b1-")
