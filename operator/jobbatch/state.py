"""What one operator process shares between handlers (kept in kopf's memo)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from jobbatch.dispatch import Dispatcher
from jobbatch.kube import Kube

if TYPE_CHECKING:
    from jobbatch.reconciler import BatchReconciler


@dataclasses.dataclass
class Runtime:
    kube: Kube
    dispatcher: Dispatcher
    reconcilers: dict[str, BatchReconciler] = dataclasses.field(default_factory=dict)
