"""Running experiments: one run (:mod:`.run`), the run directory's rules (:mod:`.rundir`), and the
comparison of several methods (:mod:`.compare`)."""

from .compare import compare_methods
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

__all__ = ["RESULTS", "Components", "RunLock", "accelerator_for", "check_same_config", "compare_methods",
           "evaluate_run", "evaluate_saved", "is_finished", "load_components", "load_run_config", "load_trained",
           "read_metrics", "run_experiment"]
