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


def orphaned_placement_groups() -> list:
    """Placement groups still held although the actor that made them is dead.

    Ray ties such a group's lifetime to the job, not to its creator, so the group of a Ray Train
    run whose controller died stays reserved until the sweep's driver exits. Read from the GCS
    table through Ray's private accessor: the public `placement_group_table` omits the creator.
    """
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup

    orphans = []
    for blob in state._connect_and_get_accessor().get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(blob)
        made_by_actor = not ray.ActorID(pg.creator_actor_id).is_nil()  # not by a driver
        removed = pg.state == gcs_pb2.PlacementGroupTableData.REMOVED
        if made_by_actor and pg.creator_actor_dead and not pg.is_detached and not removed:
            orphans.append(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
    return orphans


class FreeStoppedTrials(tune.Callback):
    """Frees the Ray Train workers' placement group of every trial the scheduler stopped.

    Tune stops a trial by ending its actor, which takes the trial's Ray Train controller with it;
    the controller's worker placement group stays reserved (see `orphaned_placement_groups`) and
    the next trials wait for CPUs that never come back. Ray Train V2 frees it from a detached
    watcher that needs the dashboard's state API, which `cluster.connect` does not start (and
    which cannot pick between several local Ray instances). So every few seconds the sweep's
    driver removes placement groups whose creator died.
    """

    def __init__(self, every_s: float = 2.0):
        self.every_s = every_s
        self._last = 0.0

    def on_step(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self._last < self.every_s:
            return
        self._last = time.monotonic()
        for pg in orphaned_placement_groups():
            log.info("sweep: freeing placement group %s of a stopped trial's Ray Train run", pg.id.hex())
            ray.util.remove_placement_group(pg)
