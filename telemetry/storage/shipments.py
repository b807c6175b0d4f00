"""The shipments part of the storage interface (mixed into each back end's store, like
``AlertStore``): shipments with their route and linked streams, and the alerts a
shipment's report reads.

A shipment is saved whole (row, segments, streams) in one transaction, guarded by its
``version``: ``save_shipment`` succeeds only if the stored version is the one the caller
read, so two concurrent edits cannot silently lose one of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from telemetry.evidence.canonical import ShipmentClosed, ShipmentOpened
from telemetry.storage.alerts import AlertRecord

if TYPE_CHECKING:  # telemetry.shipments imports the storage package: no cycle at run time
    from telemetry.shipments import Shipment

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SHIPMENT_COLUMNS = (
    "id, product, batch, origin_site, profile_id, state, opened_at, closed_at, version,"
    " created_at, updated_at"
)
# What a read selects: the columns above and the shipment's evidence leaves.
SHIPMENT_SELECT = SHIPMENT_COLUMNS + ", opened_leaf, closed_leaf"


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


def _us(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1)


def opened_record(s: Shipment, profile: Mapping[str, Any] | None) -> ShipmentOpened:
    """The shipment_opened leaf: what the goods are and the limits they are held to
    (``profile``: the profile's id, name and temperature limits, as the report uses them)."""
    return ShipmentOpened(
        shipment_id=s.id,
        at_us=_us(s.opened_at),
        product=s.product,
        product_batch=s.batch,
        origin_site=s.origin_site,
        profile=profile if profile is not None else {"id": s.profile_id},
    )


def closed_record(s: Shipment) -> ShipmentClosed:
    """The shipment_closed leaf. Its summary is the route as closed (which device watched
    the goods from when to when): the windows a verifier checks each device's batches
    over, signed into the log so they cannot be redrawn afterwards."""
    assert s.closed_at is not None
    return ShipmentClosed(
        shipment_id=s.id,
        at_us=_us(s.closed_at),
        summary={
            "profile_id": s.profile_id,
            "segments": [
                {
                    "device_id": g.device_id,
                    "start_us": _us(g.start),
                    "end_us": _us(g.end if g.end is not None else s.closed_at),
                    "label": g.label,
                }
                for g in s.segments
            ],
        },
    )


def profile_record(source: Any, profile_id: str) -> dict[str, Any]:
    """The profile as the shipment_opened leaf records it: id, name and the temperature
    limits the report judges by (telemetry.reports.limits_of)."""
    # imported here: telemetry.reports imports telemetry.shipments, which imports this package
    from telemetry.reports import limits_of
    from telemetry.shipments import find_profile

    profile = find_profile(source, profile_id)
    return {
        "id": profile_id,
        "name": None if profile is None else profile.name,
        "limits": [lim.to_dict() for lim in limits_of(profile)],
    }


__all__ = [
    "SHIPMENT_COLUMNS",
    "SHIPMENT_SELECT",
    "ShipmentStore",
    "closed_record",
    "opened_record",
    "profile_record",
]
