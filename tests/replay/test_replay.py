"""The recorded histories of every saga path replay against the current workflow code."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from temporalio import workflow

from ordersaga.replay import load_history_file, replay_histories
from tests.support.processes import VENV_BIN
from workflows.contract import OrderInput, OrderResult
from workflows.order import OrderWorkflow

HISTORIES = Path(__file__).parent / "histories"
# Recorded on the current plan (authorise, review, capture), by tests/saga with ORDERSAGA_RECORD_HISTORIES=1.
CURRENT = HISTORIES / "current"
# Sagas recorded on the plan before it (review, then one charge), in both call shapes: still in flight
# somewhere when the new code rolls out, so they must keep replaying (workflow.patched).
V1 = HISTORIES / "v1-charge-before-review"
# Recorded on the plan with typed order activities (workflow.patched "typed-order-activities"): each
# order step its own activity, create_order marking the saga started. Recorded by tests/workflows on
# stand-in activities with ORDERSAGA_RECORD_HISTORIES=1; the corpora above are all before the patch.
TYPED = HISTORIES / "typed-order-activities"
TYPED_PATHS = {
    "success",
    "success_local",
    "create_order_refused",
    "validate_user_refused",
    "reserve_stock_refused",
    "authorize_payment_refused",
    "capture_payment_refused",
    "pivot_retried",
    "review_approved",
    "review_rejected",
    "customer_cancelled_in_review",
    "operator_cancelled_in_review",
    "review_timeout",
    "compensation_failed_retried",
}
V1_PATHS = {
    "success",
    "user_invalid",
    "out_of_stock",
    "payment_declined",
    "payment_retried",
    "payment_failed",
    "review_approved",
    "review_rejected",
    "customer_cancelled",
    "compensation_retried",
    "review_timeout",
    "worker_killed",
}
CURRENT_PATHS = V1_PATHS | {
    "authorize_invalid_method",
    "operator_cancelled_in_review",
    "operator_cancelled_in_pivot",
    "terminated_in_review",
    "terminated_repaired",
    "terminated_rolled_forward",
    "compensation_failed",
    "compensation_failed_retried",
    "reset_confirmed",
    # The reconciler's sweep that tidied a closed saga's loose ends (workflow.patched
    # "reconcile-loose-ends"), recorded by tests/chaos/test_loose_ends.py with ORDERSAGA_RECORD_HISTORIES=1.
    "reconcile_loose_ends",
}


def recorded() -> list[Path]:
    return sorted(HISTORIES.rglob("*.json"))


@pytest.mark.parametrize(
    ("corpus", "paths"),
    [
        (CURRENT, CURRENT_PATHS),
        (V1 / "local-activities", V1_PATHS),
        (V1 / "regular-activities", V1_PATHS),
        (TYPED, TYPED_PATHS),
    ],
    ids=["current", "v1-local-activities", "v1-regular-activities", "typed-order-activities"],
)
def test_corpus_covers_every_saga_path(corpus: Path, paths: set[str]) -> None:
    assert {path.stem for path in corpus.glob("*.json")} >= paths


@pytest.mark.parametrize("path", recorded(), ids=lambda p: str(p.relative_to(HISTORIES).with_suffix("")))
async def test_history_replays_against_current_code(path: Path) -> None:
    [outcome] = await replay_histories([(str(path), load_history_file(path))])
    assert outcome.ok, outcome.reason


@workflow.defn(name="OrderWorkflow", sandboxed=False)
class ReorderedOrderWorkflow(OrderWorkflow):
    """A deliberately incompatible change: a timer before the first step, without workflow.patched."""

    @workflow.run
    async def run(self, order: OrderInput) -> OrderResult:
        await workflow.sleep(1)
        return await super().run(order)


async def test_incompatible_change_is_detected_as_nondeterminism() -> None:
    history = load_history_file(V1 / "local-activities" / "success.json")
    [outcome] = await replay_histories([("success", history)], workflows=[ReorderedOrderWorkflow])
    assert not outcome.ok
    assert "nondetermin" in (outcome.reason or "").lower()


async def test_tctl_export_format_replays(tmp_path: Path) -> None:
    """tctl wrote enum names without their prefix ("WorkflowExecutionStarted"); both are accepted."""
    raw = json.loads((V1 / "local-activities" / "success.json").read_text())
    for event in raw["events"]:
        event["eventType"] = _pascal(event["eventType"].removeprefix("EVENT_TYPE_"))
    exported = tmp_path / "order-tctl.json"
    exported.write_text(json.dumps(raw))
    [outcome] = await replay_histories([(str(exported), load_history_file(exported))])
    assert outcome.ok, outcome.reason


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def test_cli_replays_the_corpus_and_reports_each_history() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "ordersaga"), "replay", str(HISTORIES)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
    assert len(lines) == len(recorded())


def test_cli_exits_non_zero_on_a_broken_history(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"events": []}')
    result = subprocess.run(
        [str(VENV_BIN / "ordersaga"), "replay", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "broken.json" in result.stdout
