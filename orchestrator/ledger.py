"""The Optuna study as the ledger of what must run and what ran.

The sampler never chooses a configuration: every grid cell is enqueued with its content key as a
user attribute, and a worker claims a waiting trial by moving it WAITING -> RUNNING in the
storage (a compare-and-set). A key with a COMPLETE trial never runs again; a key whose trials all
failed is enqueued again until it has used `max_attempts`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from orchestrator.grid import TrialSpec

optuna.logging.set_verbosity(logging.WARNING)


@dataclass(frozen=True)
class Claim:
    trial_id: int  # Optuna's storage id
    number: int  # Optuna's per-study trial number
    key: str


def open_storage(url: str) -> optuna.storages.RDBStorage:
    kwargs = (
        {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    )
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


class Ledger:
    def __init__(self, storage_url: str, study_name: str):
        self.storage = open_storage(storage_url)
        self.study = optuna.create_study(
            study_name=study_name,
            storage=self.storage,
            load_if_exists=True,
            direction="maximize",
        )

    def states(self) -> dict[str, list[TrialState]]:
        by_key: dict[str, list[TrialState]] = defaultdict(list)
        for t in self.study.get_trials(deepcopy=False):
            if "key" in t.user_attrs:
                by_key[t.user_attrs["key"]].append(t.state)
        return by_key

    def sync(self, trials: list[TrialSpec], max_attempts: int) -> list[TrialSpec]:
        """Enqueue every cell that still has to run; return them in grid order."""
        states = self.states()
        todo = []
        for t in trials:
            seen = states.get(t.key, [])
            if TrialState.COMPLETE in seen:
                continue
            if TrialState.WAITING in seen or TrialState.RUNNING in seen:
                todo.append(t)
                continue
            if seen.count(TrialState.FAIL) >= max_attempts:
                continue
            self.study.enqueue_trial(
                dict(t.settings),
                user_attrs={"key": t.key, "seed": t.seed, "axis": t.axis, "setting": t.setting},
            )
            todo.append(t)
        return todo

    def claim(self, wanted: set[str] | None = None) -> Claim | None:
        """Take one waiting trial; None when nothing is left."""
        sid = self.study._study_id
        for t in self.storage.get_all_trials(sid, deepcopy=False, states=(TrialState.WAITING,)):
            key = t.user_attrs.get("key")
            if key is None or (wanted is not None and key not in wanted):
                continue
            if self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                return Claim(t._trial_id, t.number, key)
        return None

    def record_params(
        self, claim: Claim, settings: dict[str, str], choices: dict[str, list[str]]
    ) -> None:
        """Axis values as categorical params, so Optuna's importance tools can read them."""
        trial = optuna.Trial(self.study, claim.trial_id)
        for axis in settings:
            # The value was fixed at enqueue time; suggesting records it with its distribution.
            trial.suggest_categorical(axis, choices[axis])

    def report(self, claim: Claim, step: int, value: float) -> None:
        """An intermediate value (a probe accuracy during training) at `step`."""
        self.storage.set_trial_intermediate_value(claim.trial_id, step, value)

    def complete(self, claim: Claim, value: float) -> None:
        self.study.tell(claim.number, value)

    def fail(self, claim: Claim, reason: str) -> None:
        self.storage.set_trial_user_attr(claim.trial_id, "error", reason[:500])
        self.study.tell(claim.number, state=TrialState.FAIL)
