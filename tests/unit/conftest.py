"""Checks that hold in every unit test."""

from __future__ import annotations

from typing import Any

import pytest

from jobbatch import planner


@pytest.fixture(autouse=True)
def _passes_never_change_the_batch_they_plan_from(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass works on a copy of the status that shares what it only replaces (``planner._working_copy``):
    every pass of every test checks that the batch it was given is left as it was."""
    init, finish = planner._Pass.__init__, planner._Pass.finish

    def checked_init(self: Any, batch: planner.Batch, *args: Any, **kwargs: Any) -> None:
        given = batch.status.model_copy(deep=True)
        init(self, batch, *args, **kwargs)
        self.given_status = given

    def checked_finish(self: Any) -> planner.Plan:
        out = finish(self)
        assert self.batch.status == self.given_status, "a planning pass changed the status it planned from"
        return out

    monkeypatch.setattr(planner._Pass, "__init__", checked_init)
    monkeypatch.setattr(planner._Pass, "finish", checked_finish)
