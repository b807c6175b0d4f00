"""The shipments part of the storage interface (mixed into each back end's store, like
``AlertStore``): shipments with their route and linked streams, and the alerts a
shipment's report reads.

A shipment is saved whole (row, segments, streams) in one transaction, guarded by its
``version``: ``save_shipment`` succeeds only if the stored version is the one the caller
read, so two concurrent edits cannot silently lose one of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from telemetry.storage.alerts import AlertRecord

if TYPE_CHECKING:  # telemetry.shipments imports the storage package: no cycle at run time
    from telemetry.shipments import Shipment

SHIPMENT_COLUMNS = (
    "id, product, batch, origin_site, profile_id, state, opened_at, closed_at, version,"
    " created_at, updated_at"
)


class ShipmentStore(Protocol):
    def create_shipment(self, shipment: Shipment) -> Shipment:
        """Insert a new shipment (version 1); ShipmentConflict if the id is taken."""
        ...

    def get_shipment(self, shipment_id: str) -> Shipment | None: ...

    def list_shipments(
        self, *, state: str | None = None, origin_site: str | None = None, limit: int = 100
    ) -> list[Shipment]:
        """Newest opened first."""
        ...

    def save_shipment(self, shipment: Shipment) -> Shipment:
        """Replace the stored shipment whose version is ``shipment.version``; returns it
        with the next version. ShipmentConflict when the stored version differs."""
        ...

    def alerts_overlapping(self, device_id: str, start: datetime, end: datetime) -> list[AlertRecord]:
        """The device's alerts whose span [start, cleared_at or open) overlaps [start, end),
        oldest first, each with its audit trail."""
        ...


__all__ = ["SHIPMENT_COLUMNS", "ShipmentStore"]
