"""How a sweep's trials are stopped early, and what a stopped trial leaves behind to free."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from orchestration.config import SweepConfig

log = logging.getLogger("reasonforge.sweep")


class ResumableASHA(ASHAScheduler):
    """ASHA whose rungs survive `Tuner.restore`.

    Ray Tune 2.60 saves no scheduler state with the experiment, so a restored ASHA would compare
    the remaining trials only with each other. When Tune (re-)adds a trial that has already
    reported, which happens only on restore, its reports are replayed from its result.json.
    """

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if self._time_attr not in trial.run_metadata.last_result:  # nothing reported: a new trial
            return
        for line in (Path(trial.path) / "result.json").read_text().splitlines():
            self.on_trial_result(tune_controller, trial, json.loads(line))  # the rungs record it


def _asha(sweep: SweepConfig, max_steps: int) -> TrialScheduler:
    # max_t one past the last step: ASHA stops any trial that reaches max_t, which would end the
    # trial before its stage exports the model.
    return ResumableASHA(
        time_attr="step",
        max_t=max_steps + 1,
        grace_period=sweep.grace_period,
        reduction_factor=sweep.reduction_factor,
    )


SCHEDULERS = {"asha": _asha, "fifo": lambda sweep, max_steps: FIFOScheduler()}


def _job_placement_groups() -> list[tuple[object, bool]]:
    """This job's live placement groups made by actors, each with whether its creator is dead.

    Ray ties such a group's lifetime to the job, not to its creator, so the group of a Ray Train
    run whose controller died stays reserved until the sweep's driver exits. Read from the GCS
    table through Ray's private accessor: the public `placement_group_table` omits the creator.
    """
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup

    job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
    groups = []
    for blob in state._connect_and_get_accessor().get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(blob)
        made_by_actor = not ray.ActorID(pg.creator_actor_id).is_nil()  # not by a driver (Tune's trials)
        live = pg.state != gcs_pb2.PlacementGroupTableData.REMOVED and not pg.is_detached
        if made_by_actor and live and ray.JobID(pg.creator_job_id) == job:
            groups.append(
                (PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)), pg.creator_actor_dead)
            )
    return groups


def free_orphaned_placement_groups() -> int:
    """Remove this job's placement groups whose creating actor died; returns how many."""
    orphans = [pg for pg, creator_dead in _job_placement_groups() if creator_dead]
    for pg in orphans:
        log.info("sweep: freeing placement group %s of a stopped trial's Ray Train run", pg.id.hex())
        ray.util.remove_placement_group(pg)
    return len(orphans)


def free_after_sweep(timeout_s: float = 30.0) -> None:
    """Once every trial ended: wait for the last stopped trials' controllers to die, freeing
    their groups, so that the Ray instance is whole again for whatever runs next."""
    deadline = time.monotonic() + timeout_s
    while True:
        free_orphaned_placement_groups()
        if not _job_placement_groups() or time.monotonic() > deadline:
            return
        time.sleep(1.0)


class FreeStoppedTrials(tune.Callback):
    """Frees the Ray Train workers' placement group of every trial the scheduler stopped.

    Tune stops a trial by ending its actor, which takes the trial's Ray Train controller with it;
    the controller's worker placement group stays reserved (see `_job_placement_groups`) and
    the next trials wait for CPUs that never come back. Ray Train V2 frees it from a detached
    watcher that needs the dashboard's state API, which `cluster.connect` does not start (and
    which cannot pick between several local Ray instances). So every few seconds the sweep's
    driver removes placement groups whose creator died.
    """

    def __init__(self, every_s: float = 2.0):
        self.every_s = every_s
        self._last = 0.0

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self._last < self.every_s:
            return
        self._last = time.monotonic()
        free_orphaned_placement_groups()
