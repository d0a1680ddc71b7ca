"""Which version a worker polls as, and which workflows stay pinned to it."""

from __future__ import annotations

import shutil
from pathlib import Path

from temporalio import workflow
from temporalio.common import VersioningBehavior

from workers.main import deployment_config
from workers.settings import WORKFLOWS_PACKAGE, WorkerSettings, workflow_code_build_id
from workflows.order import OrderWorkflow
from workflows.repair import ReconcileWorkflow, RepairWorkflow


def test_the_default_build_id_changes_with_the_workflow_code_and_only_with_it(tmp_path: Path) -> None:
    copy = tmp_path / "workflows"
    shutil.copytree(WORKFLOWS_PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert workflow_code_build_id(copy) == workflow_code_build_id() == WorkerSettings().worker_build_id()
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "order.cpython-311.pyc").write_bytes(b"compiled")
    assert workflow_code_build_id(copy) == workflow_code_build_id(), "bytecode is not code"
    order = copy / "order.py"
    order.write_text(order.read_text() + "\n# a change\n")
    assert workflow_code_build_id(copy) != workflow_code_build_id()


def test_an_explicit_build_id_wins_and_versioning_off_polls_unversioned() -> None:
    config = deployment_config(WorkerSettings(build_id="0.2.0", deployment_name="shop"))
    assert config is not None
    assert (config.version.deployment_name, config.version.build_id) == ("shop", "0.2.0")
    assert config.use_worker_versioning
    assert deployment_config(WorkerSettings(versioning="off")) is None


def test_a_versioned_worker_pins_its_sagas_and_the_definitions_declare_nothing() -> None:
    config = deployment_config(WorkerSettings())
    assert config is not None
    assert config.default_versioning_behavior == VersioningBehavior.PINNED
    # The definitions the worker registers (the SDK keeps them on the class; no public accessor)
    # declare no behaviour, so that an unversioned worker can still run them.
    behaviours = {
        cls: workflow._Definition.must_from_class(cls).versioning_behavior
        for cls in (OrderWorkflow, RepairWorkflow, ReconcileWorkflow)
    }
    assert set(behaviours.values()) == {VersioningBehavior.UNSPECIFIED}
