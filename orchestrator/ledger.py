"""The Optuna study as the ledger of what must run and what ran.

The sampler never chooses a configuration: every grid cell is enqueued with its content key as a
user attribute, and a worker claims a waiting trial by moving it WAITING -> RUNNING in the
storage (a compare-and-set). A key with a COMPLETE trial never runs again; a key whose trials all
failed is enqueued again until it has used `max_attempts`.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
from optuna.exceptions import StorageInternalError
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from db.engine import driver_reason, mask_url, url_password
from model.errors import AblError
from orchestrator.grid import TrialSpec

optuna.logging.set_verbosity(logging.WARNING)


@dataclass(frozen=True)
class Claim:
    trial_id: int  # Optuna's storage id
    number: int  # Optuna's per-study trial number
    key: str


# A worker beats every HEARTBEAT_S seconds while it runs a trial; a RUNNING trial whose last
# beat is older than GRACE_S belonged to a worker that died (killed, machine lost) and is failed
# by the next worker that looks, so the ledger enqueues it again.
HEARTBEAT_S = int(os.environ.get("ABL_HEARTBEAT_S", "15"))
GRACE_S = int(os.environ.get("ABL_GRACE_S", "60"))
LOST = f"worker lost: no heartbeat for {GRACE_S} s"  # the reason a reaped attempt failed


JOURNAL = "journal://"  # journal:///shared/abl-out/optuna.journal: Optuna's journal file


class JournalLedgerStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal file storage with the heartbeats abl reaps lost workers by, for a
    shared filesystem that every node mounts (no database server). Optuna keeps heartbeats in
    RDB storage only; here a beat is a trial system attribute holding the beating node's clock
    (the nodes' clocks are assumed in step, as NTP keeps them on a cluster)."""

    def __init__(self, path: str):
        backend = JournalFileBackend(path, lock_obj=JournalFileOpenLock(path))
        super().__init__(backend)

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, "abl_heartbeat", time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = t.system_attrs.get("abl_heartbeat")
            if beat is None:  # claimed but no beat yet: count from the claim
                beat = t.datetime_start.timestamp() if t.datetime_start else now
            if now - beat > GRACE_S:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return HEARTBEAT_S

    def get_heartbeat_stale_trial_callback(self) -> None:
        return None


def open_journal(url: str) -> JournalLedgerStorage:
    path = url.removeprefix(JOURNAL)
    if not path.startswith("/"):
        raise AblError(
            f"Optuna storage {url!r}: a journal file needs an absolute path on the shared "
            "filesystem, e.g. journal:///shared/abl-out/optuna.journal"
        )
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalLedgerStorage(path)
    except OSError as e:
        raise AblError(
            f"Optuna storage {url}: the journal file cannot be opened ({e.strerror}); check "
            "`storage.optuna` in the experiments file and that its folder is writable"
        ) from None


def is_sqlite(storage: optuna.storages.BaseStorage) -> bool:
    return isinstance(storage, RDBStorage) and storage.engine.dialect.name == "sqlite"


def open_storage(url: str) -> RDBStorage | JournalLedgerStorage:
    if url.startswith(JOURNAL):
        return open_journal(url)
    kwargs = (
        {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    )
    try:
        with warnings.catch_warnings():
            # Heartbeats are "experimental" in Optuna 5; they are what finds dead workers.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
            )
    except (SQLAlchemyError, StorageInternalError, ValueError, ImportError) as e:
        raise AblError(
            f"Optuna storage {mask_url(url)} cannot be opened "
            f"({driver_reason(e, url_password(url))}); check `storage.optuna` in the "
            "experiments file and that the server is up"
        ) from None


class Ledger:
    def __init__(self, storage_url: str, study_name: str):
        self.storage = open_storage(storage_url)
        self.study = optuna.create_study(
            study_name=study_name,
            storage=self.storage,
            load_if_exists=True,
            direction="maximize",
        )
        self.pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)

    def states(self) -> dict[str, list[TrialState]]:
        """Each key's attempts; an attempt released by Ctrl-C is not counted as one."""
        by_key: dict[str, list[TrialState]] = defaultdict(list)
        for t in self.study.get_trials(deepcopy=False):
            if "key" in t.user_attrs and not t.user_attrs.get("released"):
                by_key[t.user_attrs["key"]].append(t.state)
        return by_key

    def reap(self) -> list[tuple[str, int]]:
        """Fail the RUNNING trials whose worker stopped beating; returns their (key, trial
        number) pairs, those this call failed (another worker may reap some first)."""
        sid = self.study._study_id
        stale = self.storage._get_stale_trial_ids(sid)
        lost = []
        for tid in stale:
            try:
                # The reason first: a finished trial takes no more attributes.
                self.storage.set_trial_user_attr(tid, "error", LOST)
                if self.storage.set_trial_state_values(tid, TrialState.FAIL):
                    t = self.storage.get_trial(tid)
                    lost.append((t.user_attrs.get("key", "?"), t.number))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker reaped it first
        return lost

    def heartbeat(self, claim: Claim):
        """A context manager beating for the claimed trial in a background thread."""
        from optuna.storages._heartbeat import get_heartbeat_thread

        self.storage.record_heartbeat(claim.trial_id)
        return get_heartbeat_thread(claim.trial_id, self.storage)

    def sync(self, trials: list[TrialSpec], max_attempts: int) -> list[TrialSpec]:
        """Enqueue every cell that still has to run; return them in grid order."""
        states = self.states()
        todo = []
        for t in trials:
            seen = states.get(t.key, [])
            if TrialState.COMPLETE in seen or TrialState.PRUNED in seen:
                continue  # finished: a pruned trial was stopped on purpose
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

    def waiting(self) -> int:
        """Trials enqueued and not yet claimed by any worker."""
        sid = self.study._study_id
        return len(self.storage.get_all_trials(sid, deepcopy=False, states=(TrialState.WAITING,)))

    def claim(self, wanted: set[str] | None = None) -> Claim | None:
        """Take one waiting trial; None when nothing is left."""
        sid = self.study._study_id
        for t in self.storage.get_all_trials(sid, deepcopy=False, states=(TrialState.WAITING,)):
            key = t.user_attrs.get("key")
            if key is None or (wanted is not None and key not in wanted):
                continue
            if self._start(t._trial_id):
                # The first beat at once: a worker that dies before its heartbeat thread
                # starts leaves a beat that goes stale, so the trial is reaped and runs again
                # (a RUNNING trial with no beat at all is never stale to Optuna).
                self.storage.record_heartbeat(t._trial_id)
                claim = Claim(t._trial_id, t.number, key)
                if self._taken(claim):
                    # Two workers synced at once and enqueued the key twice: this copy goes.
                    self.fail(claim, "duplicate of a trial already run or running", True)
                    continue
                return claim
        return None

    def _start(self, trial_id: int) -> bool:
        """WAITING -> RUNNING, True for exactly one of the workers that try it at once.
        Optuna's own check reads the state with SELECT ... FOR UPDATE, which locks the row on
        PostgreSQL but not on SQLite: there two workers could both read WAITING and both run
        the trial. On SQLite the change is one compare-and-set UPDATE instead."""
        if not is_sqlite(self.storage):
            try:
                return self.storage.set_trial_state_values(trial_id, TrialState.RUNNING)
            except optuna.exceptions.UpdateFinishedTrialError:
                return False  # another worker claimed and finished it since it was listed
        with self.storage.engine.begin() as conn:
            changed = conn.execute(
                text(
                    "UPDATE trials SET state = 'RUNNING', datetime_start = :now "
                    "WHERE trial_id = :id AND state = 'WAITING'"
                ),
                {"now": str(datetime.now()), "id": trial_id},
            ).rowcount
        return changed == 1

    def _taken(self, claim: Claim) -> bool:
        """Whether another trial of the claim's key is complete, or running and older (of two
        copies claimed at the same moment, the older one runs)."""
        sid = self.study._study_id
        for t in self.storage.get_all_trials(
            sid, deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)
        ):
            if t.user_attrs.get("key") != claim.key or t._trial_id == claim.trial_id:
                continue
            if t.state == TrialState.COMPLETE or t._trial_id < claim.trial_id:
                return True
        return False

    def record_params(
        self, claim: Claim, settings: dict[str, str], choices: dict[str, list[str]]
    ) -> None:
        """Axis values as categorical params, so Optuna's importance tools can read them.

        Optuna keeps one distribution per param name in a study and refuses another: once an
        axis' values were edited between runs, the trials of the new grid leave that axis out
        of their params (their settings stay in the user attrs and the results table)."""
        known: dict[str, optuna.distributions.BaseDistribution] = {}
        for t in self.study.get_trials(deepcopy=False):
            for name, dist in t.distributions.items():
                known.setdefault(name, dist)
        trial = optuna.Trial(self.study, claim.trial_id)
        for axis in settings:
            dist = optuna.distributions.CategoricalDistribution(choices[axis])
            if known.get(axis, dist) != dist:
                continue
            # The value was fixed at enqueue time; suggesting records it with its distribution.
            trial.suggest_categorical(axis, choices[axis])

    def report(self, claim: Claim, step: int, value: float) -> None:
        """An intermediate value (a probe accuracy during training) at `step`."""
        self.storage.set_trial_intermediate_value(claim.trial_id, step, value)

    def should_prune(self, claim: Claim) -> bool:
        """Optuna's median rule on the intermediate values reported so far: the trial's
        latest value is below the median of other trials' values at the same step (after 2
        finished trials and the first report)."""
        frozen = self.storage.get_trial(claim.trial_id)
        return self.pruner.prune(self.study, frozen)

    def pruned(self, claim: Claim, step: int) -> None:
        self.storage.set_trial_user_attr(claim.trial_id, "pruned_at", step)
        self.study.tell(claim.number, state=TrialState.PRUNED)

    def complete(self, claim: Claim, value: float) -> None:
        self.study.tell(claim.number, value)

    def fail(self, claim: Claim, reason: str, released: bool = False) -> None:
        """Close an attempt as failed; `released` (Ctrl-C, a stopped worker) keeps it from
        counting against the key's attempts, so the next run simply runs it again."""
        self.storage.set_trial_user_attr(claim.trial_id, "error", reason[:500])
        if released:
            self.storage.set_trial_user_attr(claim.trial_id, "released", True)
        self.study.tell(claim.number, state=TrialState.FAIL)
