"""The names workflows/contract.py declares, under the module path older imports use.

Nothing is declared here: new code imports workflows.contract.
"""

from workflows.contract import *  # noqa: F403
