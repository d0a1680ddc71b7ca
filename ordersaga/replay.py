"""Replay recorded histories against the current workflow code and report nondeterminism."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from services.kit.codec import data_converter
from workflows.order import OrderWorkflow
from workflows.repair import ReconcileWorkflow, RepairWorkflow

# The deploy gate (`ordersaga replay --against-running`): every saga still running must replay on the
# code about to be deployed, the sagas that an AUTO_UPGRADE or unversioned rollout would move onto it.
RUNNING_SAGAS_QUERY = "WorkflowType='OrderWorkflow' AND ExecutionStatus='Running'"

# Every workflow the worker runs: a history of any of them replays.
WORKFLOWS: list[type] = [OrderWorkflow, RepairWorkflow, ReconcileWorkflow]


@dataclass
class ReplayOutcome:
    source: str
    workflow_id: str
    ok: bool
    reason: str | None = None


def load_history_file(path: Path) -> WorkflowHistory:
    """Read `temporal workflow show -o json` output, tctl's export, or the SDK's own `to_json`."""
    raw: Any = json.loads(path.read_text())
    if isinstance(raw, list):
        raw = {"events": raw}  # a bare event list
    if isinstance(raw, dict) and "history" in raw and isinstance(raw["history"], dict):
        raw = raw["history"]  # GetWorkflowExecutionHistory responses wrap it
    if not isinstance(raw, dict) or not isinstance(raw.get("events"), list) or not raw["events"]:
        raise ValueError(f"{path}: no history events found")
    workflow_id = _workflow_id(raw) or path.stem
    return WorkflowHistory.from_json(workflow_id, raw)


def _workflow_id(raw: dict[str, Any]) -> str | None:
    value = raw.get("workflowId") or raw.get("workflow_id")
    return str(value) if value else None


def replayer() -> Replayer:
    return Replayer(workflows=WORKFLOWS, data_converter=data_converter())


async def replay_histories(
    sources: Iterable[tuple[str, WorkflowHistory]], *, workflows: list[type] | None = None
) -> list[ReplayOutcome]:
    # Encrypted histories need the same keys; unencrypted payloads pass the codec untouched.
    engine = Replayer(workflows=workflows or WORKFLOWS, data_converter=data_converter())
    outcomes: list[ReplayOutcome] = []
    for source, history in sources:
        result = await engine.replay_workflow(history, raise_on_replay_failure=False)
        failure = result.replay_failure
        outcomes.append(
            ReplayOutcome(
                source, history.workflow_id, failure is None, None if failure is None else _reason(failure)
            )
        )
    return outcomes


async def fetch_histories(
    client: Client, *, workflow_ids: Iterable[str] = (), query: str | None = None
) -> AsyncIterator[tuple[str, WorkflowHistory]]:
    for workflow_id in workflow_ids:
        yield f"workflow {workflow_id}", await client.get_workflow_handle(workflow_id).fetch_history()
    if query:
        async for execution in client.list_workflows(query):
            handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
            yield f"workflow {execution.id}", await handle.fetch_history()


def _reason(failure: Exception) -> str:
    text = str(failure).strip() or type(failure).__name__
    return " ".join(text.split())[:600]
