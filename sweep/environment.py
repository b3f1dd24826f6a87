"""Every environment variable this tool sets for Ray: the one place they are set, why, and the
Ray version each was checked with (2.60 for all).

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  With Ray's cluster mode off, a Ray this command starts
        takes 127.0.0.1 as its node address and its servers listen on the loopback only. Read
        when Ray is first imported; not set when a Ray address is given.
    RAY_AIR_NEW_OUTPUT=0  Tune's legacy console output prints nothing at verbose=0 (the new one
        prints its experiment header); the sweep prints its own progress table.
    TUNE_PRINT_ALL_TRIAL_ERRORS=0, with the above  Tune prints no traceback for a failed trial
        (hundreds of lines on a full disk); the progress table prints one line naming the trial
        and its error, which MLflow and results.json keep whole.
    TUNE_DISABLE_SIGINT_HANDLER=1, while Tune's fit runs  Tune's own SIGINT handler would take a
        Ctrl-C unrecorded; the sweep's handler takes it and passes it on as SIGUSR1, Tune's stop
        signal.
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=train.report_poll_s  How often Train's controller collects
        `ray.train.report` (default 2 s; a worker's next report waits for it, which throttles
        close evaluations). No public setting; given to Ray's processes in `ray.init`'s runtime
        environment.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

__all__ = ["LOCAL_ONLY", "QUIET_TUNE", "TRIAL_ERRORS", "TUNE_SIGINT", "REPORT_POLL", "single_machine", "quiet_tune",
           "tune_sigint_off", "runtime_env"]

LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
QUIET_TUNE = "RAY_AIR_NEW_OUTPUT"
TRIAL_ERRORS = "TUNE_PRINT_ALL_TRIAL_ERRORS"
TUNE_SIGINT = "TUNE_DISABLE_SIGINT_HANDLER"
REPORT_POLL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def single_machine(ray_address: str | None) -> None:
    """Before Ray is imported: a Ray this process will start listens on the loopback only (no
    address given, neither in the config nor in RAY_ADDRESS)."""
    if ray_address is None and not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault(LOCAL_ONLY, "0")


def quiet_tune() -> None:
    """Tune's own console output off, its trial tracebacks included (the sweep prints its
    progress table, and a line for each failed trial)."""
    os.environ.setdefault(QUIET_TUNE, "0")
    os.environ.setdefault(TRIAL_ERRORS, "0")


@contextmanager
def tune_sigint_off():
    """Tune's SIGINT handler off while the block runs (Tune's fit); the variable as it was after."""
    old = os.environ.get(TUNE_SIGINT)
    os.environ[TUNE_SIGINT] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(TUNE_SIGINT, None)
        else:
            os.environ[TUNE_SIGINT] = old


def runtime_env(report_poll_s: float) -> dict:
    """`ray.init`'s runtime environment: Train's report polling interval for its controllers."""
    return {"env_vars": {REPORT_POLL: str(report_poll_s)}}
