"""Typed SQLAlchemy 2.0 schema of the results database."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from sqlalchemy import ForeignKey, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

intpk = Annotated[int, mapped_column(primary_key=True)]
str200 = Annotated[str, mapped_column(String(200))]


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[intpk]
    name: Mapped[str200] = mapped_column(unique=True)
    created: Mapped[datetime]
    spec_json: Mapped[str] = mapped_column(Text)  # the validated experiments file, resolved
    trials: Mapped[list[Trial]] = relationship(back_populates="study")


class Trial(Base):
    """One (config, seed) cell; `key` is the content hash of both."""

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("study_id", "key"),)

    id: Mapped[intpk]
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    key: Mapped[str] = mapped_column(String(64), index=True)
    # The key of its pretraining (orchestrator.grid.pretrain_key): its checkpoint's name. NULL
    # in rows written before revision 0004, whose checkpoint is named by `key`.
    pretrain: Mapped[str | None] = mapped_column(String(64))
    # The content hash of each data set it read, by name (model.data.datasets.task_content):
    # its corpus, and each task it was scored on. NULL in rows written before revision 0005.
    data_json: Mapped[str | None] = mapped_column(Text)
    seed: Mapped[int]
    axis: Mapped[str200]  # the axis this trial varies; "baseline" or "reference" otherwise
    setting: Mapped[str200]  # the axis value as text
    settings_json: Mapped[str] = mapped_column(Text)  # every axis' value in this trial
    config_json: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))  # running | done | failed
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    optuna_trial: Mapped[int | None]
    started: Mapped[datetime | None]
    finished: Mapped[datetime | None]
    wall_s: Mapped[float | None]
    # What training actually ran with on the worker's machine (train.precision: auto picks
    # by measurement): fp32 | bf16 (| "fp32+bf16" for a trial resumed in another precision),
    # and the attention kernel, explicit | sdpa. None for references and older rows.
    precision: Mapped[str | None] = mapped_column(String(20))
    attention: Mapped[str | None] = mapped_column(String(20))
    study: Mapped[Study] = relationship(back_populates="trials")
    # delete-orphan: clearing a list (a new attempt of the trial) deletes its rows; plain
    # "all" would set their trial_id to NULL, which the schema refuses.
    metrics: Mapped[list[Metric]] = relationship(
        back_populates="trial", cascade="all, delete-orphan"
    )
    curves: Mapped[list[CurvePoint]] = relationship(
        back_populates="trial", cascade="all, delete-orphan"
    )
    predictions: Mapped[list[Prediction]] = relationship(
        back_populates="trial", cascade="all, delete-orphan"
    )


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("trial_id", "task", "metric"),)

    id: Mapped[intpk]
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id"), index=True)
    task: Mapped[str200]  # probe task, or "train" for training figures
    metric: Mapped[str200]
    value: Mapped[float]
    trial: Mapped[Trial] = relationship(back_populates="metrics")


class CurvePoint(Base):
    """One point of a training curve (loss, collapse signals, k-NN accuracy), thinned to a
    few hundred points per curve: what the reports draw. MLflow keeps every step."""

    __tablename__ = "curve_points"
    __table_args__ = (UniqueConstraint("trial_id", "name", "step"),)

    id: Mapped[intpk]
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id"), index=True)
    name: Mapped[str200]
    step: Mapped[int]
    value: Mapped[float]
    trial: Mapped[Trial] = relationship(back_populates="curves")


class Prediction(Base):
    """A trial's per-clip test predictions on one task, compact: little-endian int32 arrays
    (one entry per clip tested) of the clip's index among the task's labelled clips sorted by
    file, its group's index among the task's sorted groups, the fold that tested it, and the
    true and predicted classes as indices into `classes` (a JSON list of class names). Under
    repeated cross-validation a clip is listed once per draw of the folds, and `repeats` holds
    each entry's draw (NULL: one draw, as every row written before it)."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("trial_id", "task"),)

    id: Mapped[intpk]
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id"), index=True)
    task: Mapped[str200]
    classes: Mapped[str] = mapped_column(Text)
    clips: Mapped[bytes] = mapped_column(LargeBinary)
    groups: Mapped[bytes] = mapped_column(LargeBinary)
    folds: Mapped[bytes] = mapped_column(LargeBinary)
    truth: Mapped[bytes] = mapped_column(LargeBinary)
    pred: Mapped[bytes] = mapped_column(LargeBinary)
    repeats: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    trial: Mapped[Trial] = relationship(back_populates="predictions")
