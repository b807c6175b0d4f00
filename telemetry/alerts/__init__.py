"""Cold-chain alerts: rules and profiles, the event-time engine, the alert lifecycle.

Pure logic: readings, time and people's actions go in, ``AlertEvent``s come out. Storage
of alerts, MQTT events, webhooks and the API are wired around it elsewhere.
"""

from telemetry.alerts.engine import AlertEngine, History
from telemetry.alerts.lifecycle import (
    Action,
    Alert,
    AlertEvent,
    AlertStatus,
    AuditEntry,
    EventKind,
    LifecycleError,
    UnknownAlert,
)
from telemetry.alerts.rules import (
    BatteryLowRule,
    BudgetRule,
    Direction,
    DoorOpenRule,
    IgnorePeriod,
    LimitRule,
    Metric,
    OfflineRule,
    Profile,
    Rule,
    RuleError,
    Severity,
    builtin_profiles,
    chilled_profile,
    frozen_profile,
    pharma_profile,
    rule_from_dict,
    rule_to_dict,
)
from telemetry.alerts.settings import AlertSettings

__all__ = [
    "Action",
    "Alert",
    "AlertEngine",
    "AlertEvent",
    "AlertSettings",
    "AlertStatus",
    "AuditEntry",
    "BatteryLowRule",
    "BudgetRule",
    "Direction",
    "DoorOpenRule",
    "EventKind",
    "History",
    "IgnorePeriod",
    "LifecycleError",
    "LimitRule",
    "Metric",
    "OfflineRule",
    "Profile",
    "Rule",
    "RuleError",
    "Severity",
    "UnknownAlert",
    "builtin_profiles",
    "chilled_profile",
    "frozen_profile",
    "pharma_profile",
    "rule_from_dict",
    "rule_to_dict",
]
