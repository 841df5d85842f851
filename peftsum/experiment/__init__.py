"""Running experiments: one run (:mod:`.run`), its typed results record (:mod:`.results`), the run directory's
rules (:mod:`.rundir`), and the comparison of several methods (:mod:`.compare`)."""

from .compare import compare_methods
from .results import SCHEMA_VERSION, RunResult, read_results, write_results
from .run import (
    Components,
    accelerator_for,
    evaluate_run,
    evaluate_saved,
    load_components,
    load_trained,
    run_experiment,
)
from .rundir import RESULTS, RunLock, check_same_config, is_finished, load_run_config, read_metrics

__all__ = ["RESULTS", "SCHEMA_VERSION", "Components", "RunResult", "read_results", "write_results", "RunLock", "accelerator_for", "check_same_config", "compare_methods",
           "evaluate_run", "evaluate_saved", "is_finished", "load_components", "load_run_config", "load_trained",
           "read_metrics", "run_experiment"]
