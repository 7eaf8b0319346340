"""Alert webhooks' input side (``keyturn.domain.alerts``): parsing, hostile bodies, target
mapping with anchored matchers, and sender authentication (bearer and basic)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keyturn.config import AlertMappingConfig, AlertsConfig, BasicAuthConfig, TargetConfig
from keyturn.domain import alerts as alerts_module
from keyturn.domain.alerts import (
    AlertTargets,
    check_webhook_auth,
    is_firing,
    parse_alertmanager,
    parse_generic,
)
from keyturn.domain.errors import InvalidInput, TooLarge, Unauthenticated

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "alertmanager"
FIRING = json.loads((FIXTURES / "alertmanager-webhook-v4.json").read_text())
RESOLVED = json.loads((FIXTURES / "alertmanager-webhook-v4-resolved.json").read_text())
NOW = datetime(2026, 11, 17, 3, 0, tzinfo=UTC)
TOKEN = "am-bearer-7f3c9e"
PASSWORD = "am-basic-pass-41d2"
TARGETS = [TargetConfig(name=n) for n in ("app-1", "db-1", "db-10", "db-2")]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


def firing_with(**alert_changes: Any) -> dict[str, Any]:
    """The firing fixture with its one alert changed."""
    data = copy.deepcopy(FIRING)
    data["alerts"][0].update(alert_changes)
    return data


def invalid(data: bytes, **kwargs: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_alertmanager(data, max_alerts=kwargs.pop("max_alerts", 100), **kwargs)
    return caught.value


def invalid_generic(data: Any, max_alerts: int = 100) -> InvalidInput:
    raw = data if isinstance(data, bytes) else body(data)
    with pytest.raises(InvalidInput) as caught:
        parse_generic(raw, max_alerts=max_alerts, now=NOW)
    return caught.value


# --- Alertmanager payloads ---------------------------------------------------------------


def test_firing_fixture_parses_to_one_firing_alert_without_end() -> None:
    [alert] = parse_alertmanager(body(FIRING), max_alerts=10)
    assert alert.fingerprint == "3f1d6c0a9b2e4d17"
    assert alert.source == "alertmanager"
    assert (alert.name, alert.severity, alert.status) == (
        "PostgresPrimaryDown",
        "critical",
        "firing",
    )
    assert alert.labels["instance"] == "db-1:5432"
    assert alert.starts_at == datetime(2026, 11, 17, 2, 45, 3, tzinfo=UTC)
    assert alert.ends_at is None  # Go's zero time 0001-01-01T00:00:00Z
    assert alert.summary == "Primary database db-1 is not answering heartbeats"
    assert is_firing(alert, NOW)


def test_resolved_fixture_parses_to_a_resolved_alert_with_its_end() -> None:
    [alert] = parse_alertmanager(body(RESOLVED), max_alerts=10)
    assert alert.status == "resolved"
    assert alert.ends_at == datetime(2026, 11, 17, 3, 12, 41, tzinfo=UTC)
    assert not is_firing(alert, NOW)


def test_firing_alert_with_end_in_the_past_counts_as_resolved() -> None:
    [alert] = parse_alertmanager(body(firing_with(endsAt="2026-11-17T02:59:59Z")), max_alerts=10)
    assert alert.status == "firing"
    assert not is_firing(alert, NOW)
    assert is_firing(alert, NOW - timedelta(seconds=2))


def test_timestamps_with_nanoseconds_and_offsets_become_aware_utc() -> None:
    [alert] = parse_alertmanager(
        body(firing_with(startsAt="2026-11-17T03:45:03.123456789+01:00")), max_alerts=10
    )
    assert alert.starts_at == datetime(2026, 11, 17, 2, 45, 3, 123456, tzinfo=UTC)
    assert alert.starts_at.tzinfo is UTC


def test_summary_is_cut_to_500_characters_and_control_characters_escaped() -> None:
    data = firing_with(annotations={"summary": "\x1b[2Jwiped" + "x" * 1000})
    [alert] = parse_alertmanager(body(data), max_alerts=10)
    assert alert.summary is not None
    assert alert.summary.startswith("\\x1b[2Jwiped")
    assert "\x1b" not in alert.summary
    assert len(alert.summary) == 500 + len("\\x1b") - 1


def test_alert_without_alertname_is_named_unnamed_and_keeps_no_severity() -> None:
    [alert] = parse_alertmanager(body(firing_with(labels={"instance": "db-1"})), max_alerts=1)
    assert (alert.name, alert.severity) == ("unnamed", None)


def test_unknown_keys_from_newer_alertmanager_versions_are_ignored() -> None:
    data = firing_with(newField={"x": 1})
    data["anotherNewField"] = True
    assert len(parse_alertmanager(body(data), max_alerts=1)) == 1


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"{", b"\xff\xfe{}", b'{"version": NaN}', b"[" * 100_000, b"[]"],
    ids=["empty", "text", "truncated", "not-utf8", "nan", "deep", "array"],
)
def test_malformed_bodies_are_refused(raw: bytes) -> None:
    error = invalid(raw)
    assert "webhook" in error.message


def test_duplicate_keys_are_refused_so_no_reader_sees_another_value() -> None:
    raw = body(FIRING).replace(b'"version": "4"', b'"version": "4", "version": "5"')
    assert "twice" in invalid(raw).message


@pytest.mark.parametrize("version", ["3", "5", 4, None])
def test_other_payload_versions_are_refused_by_name(version: object) -> None:
    error = invalid(body({**FIRING, "version": version}))
    assert "version" in error.message
    assert "'4'" in error.message


def test_missing_version_is_refused() -> None:
    data = {k: v for k, v in FIRING.items() if k != "version"}
    assert invalid(body(data)).message == "invalid Alertmanager webhook: version: Field required"


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"fingerprint": None}, "alerts[0].fingerprint"),
        ({"fingerprint": ""}, "alerts[0].fingerprint"),
        ({"status": "pending"}, "alerts[0].status"),
        ({"labels": {"instance": 5432}}, "alerts[0].labels.instance"),
        ({"labels": "instance=db-1"}, "alerts[0].labels"),
        ({"startsAt": "yesterday"}, "alerts[0].startsAt"),
        ({"startsAt": "2026-11-17"}, "alerts[0].startsAt"),
        ({"startsAt": "2026-11-17T02:45:03"}, "alerts[0].startsAt"),  # no zone
        ({"startsAt": 1795279639}, "alerts[0].startsAt"),
        ({"startsAt": "2026-02-30T00:00:00Z"}, "alerts[0].startsAt"),
        ({"endsAt": "0001-01-01T00:00:00+01:00"}, "alerts[0].endsAt"),  # before year 1 in UTC
    ],
)
def test_ill_typed_alert_fields_are_refused_with_their_path(
    change: dict[str, Any], path: str
) -> None:
    error = invalid(body(firing_with(**change)))
    assert error.message.startswith(f"invalid Alertmanager webhook: {path}: ")
    assert error.details["errors"][0]["path"] == path


@pytest.mark.parametrize("key", ["fingerprint", "startsAt", "endsAt", "labels", "annotations"])
def test_missing_alert_keys_are_refused(key: str) -> None:
    data = copy.deepcopy(FIRING)
    del data["alerts"][0][key]
    assert f"alerts[0].{key}: Field required" in invalid(body(data)).message


@pytest.mark.parametrize(
    ("labels", "why"),
    [
        ({f"l{i}": "v" for i in range(65)}, "65 labels"),
        ({"n" * 129: "v"}, "label names"),
        ({"": "v"}, "label names"),
        ({"instance": "v" * 1025}, "label instance"),
        ({"instance": "db-1\n"}, "label instance"),
        ({"instance": "db-1\x00"}, "label instance"),
        ({"instance": "\u202edb-1"}, "label instance"),  # right-to-left override
        ({"inst\x1bance": "db-1"}, "label names"),
    ],
)
def test_labels_out_of_bounds_or_with_control_characters_are_refused(
    labels: dict[str, str], why: str
) -> None:
    error = invalid(body(firing_with(labels=labels)))
    assert why in error.message
    assert "\x1b" not in error.message
    assert "\x00" not in error.message


def test_labels_at_their_bounds_are_accepted() -> None:
    labels = {f"l{i:02}" + "n" * 125: "v" * 1024 for i in range(64)}
    [alert] = parse_alertmanager(body(firing_with(labels=labels)), max_alerts=1)
    assert alert.labels == labels


def test_ten_thousand_alerts_are_refused_above_max_alerts() -> None:
    data = copy.deepcopy(FIRING)
    data["alerts"] = [dict(FIRING["alerts"][0], fingerprint=f"{i:016x}") for i in range(10_000)]
    error = invalid(body(data), max_alerts=1000)
    assert isinstance(error, TooLarge)
    assert error.message == ("10000 alerts in one webhook; the limit is 1000 (alerts.max_alerts)")
    assert error.details == {"count": 10_000, "limit": 1000}


def test_exactly_max_alerts_are_accepted() -> None:
    data = copy.deepcopy(FIRING)
    data["alerts"] = [dict(FIRING["alerts"][0], fingerprint=f"{i:016x}") for i in range(50)]
    assert len(parse_alertmanager(body(data), max_alerts=50)) == 50


def test_the_same_fingerprint_twice_in_one_body_is_refused() -> None:
    data = copy.deepcopy(FIRING)
    data["alerts"] = [FIRING["alerts"][0], RESOLVED["alerts"][0]]
    assert "alerts[1] repeats alerts[0]" in invalid(body(data)).message


# --- generic webhook ---------------------------------------------------------------------


def generic(**fields: Any) -> dict[str, Any]:
    return {"alerts": [{"name": "DiskFull", "status": "firing", **fields}]}


def test_the_generic_shape_in_the_module_docstring_parses() -> None:
    doc = alerts_module.__doc__ or ""
    block = doc.split("takes this generic shape from any other tool (UTF-8 JSON)::")[1]
    example = re.sub(r"#[^\n]*", "", block.split("\n\n")[1])
    [alert] = parse_generic(example.encode(), max_alerts=10, now=NOW)
    assert (alert.fingerprint, alert.name, alert.severity) == (
        "generic:chk-4711",
        "DiskFull",
        "critical",
    )
    assert alert.labels == {
        "alertname": "DiskFull",
        "severity": "critical",
        "instance": "db-1",
        "target": "db-1",
    }
    assert alert.ends_at == datetime(2026, 11, 17, 3, 12, 41, tzinfo=UTC)
    assert alert.summary == "Disk /var is 98% full"


def test_generic_alert_without_times_starts_now_and_has_a_label_hash_fingerprint() -> None:
    [alert] = parse_generic(body(generic(labels={"b": "2", "a": "1"})), max_alerts=1, now=NOW)
    canonical = json.dumps(
        ["generic", [["a", "1"], ["alertname", "DiskFull"], ["b", "2"]]], separators=(",", ":")
    )
    assert alert.fingerprint == "generic:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert (alert.source, alert.starts_at, alert.ends_at) == ("generic", NOW, None)
    assert is_firing(alert, NOW)


def test_generic_fingerprint_is_stable_and_differs_by_labels() -> None:
    def fingerprint(labels: dict[str, str]) -> str:
        [alert] = parse_generic(body(generic(labels=labels)), max_alerts=1, now=NOW)
        return alert.fingerprint

    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"})
    assert fingerprint({"a": "1"}) != fingerprint({"a": "2"})


def test_generic_target_field_is_stored_as_the_configured_target_label() -> None:
    raw = body(generic(target="db-1"))
    [alert] = parse_generic(raw, max_alerts=1, now=NOW, target_label="host")
    assert alert.labels["host"] == "db-1"


def test_generic_resolved_alert_is_not_firing() -> None:
    [alert] = parse_generic(
        body(generic(status="resolved", ends_at="2026-11-17T02:59:00Z")), max_alerts=1, now=NOW
    )
    assert alert.status == "resolved"
    assert alert.starts_at == alert.ends_at == datetime(2026, 11, 17, 2, 59, tzinfo=UTC)
    assert not is_firing(alert, NOW)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({"alerts": [{"status": "firing"}]}, "alerts[0].name: Field required"),
        (generic(status="ok"), "alerts[0].status"),
        (generic(lables={"a": "b"}), "alerts[0].lables: Extra inputs are not permitted"),
        ({"alerts": [], "extra": 1}, "extra: Extra inputs are not permitted"),
        ({"items": []}, "alerts: Field required"),
        (generic(starts_at="now"), "alerts[0].starts_at"),
        (generic(id="x\ny"), "alerts[0].id"),
        (generic(id="i" * 129), "alerts[0].id"),
        (generic(name=""), "alerts[0].name"),
        (
            generic(starts_at="2026-11-17T03:00:00Z", ends_at="2026-11-17T02:00:00Z"),
            "ends_at is before starts_at",
        ),
        (generic(labels={"alertname": "Other"}), "labels.alertname disagrees"),
        (generic(severity="low", labels={"severity": "high"}), "labels.severity disagrees"),
        (generic(target="db-1", labels={"target": "db-2"}), "labels.target disagrees"),
        (generic(labels={f"l{i}": "v" for i in range(63)}, severity="x"), "65 labels"),
        (
            {"alerts": [{"id": "a", "name": "X", "status": "firing"}] * 2},
            "alerts[1] repeats alerts[0]",
        ),
    ],
)
def test_invalid_generic_bodies_are_refused(data: dict[str, Any], why: str) -> None:
    assert why in invalid_generic(data).message


def test_generic_ten_thousand_alerts_are_refused_above_max_alerts() -> None:
    data = {"alerts": [{"name": "X", "status": "firing", "id": str(i)} for i in range(10_000)]}
    error = invalid_generic(data, max_alerts=1000)
    assert isinstance(error, TooLarge)
    assert error.message == "10000 alerts in one webhook; the limit is 1000 (alerts.max_alerts)"


def test_generic_malformed_json_is_refused() -> None:
    assert "not valid JSON" in invalid_generic(b'{"alerts": [').message


def test_generic_needs_an_aware_now() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse_generic(body(generic()), max_alerts=1, now=datetime(2026, 11, 17))  # noqa: DTZ001


# --- mapping labels to targets -----------------------------------------------------------


def mapper(target_label: str | None = "target") -> AlertTargets:
    config = AlertsConfig(
        target_label=target_label,
        mappings=(
            AlertMappingConfig(match={"instance": r"db-1(:\d+)?"}, targets=("db-1",)),
            AlertMappingConfig(
                match={"service": "web|api", "env": "prod"}, targets=("app-1", "db-2")
            ),
        ),
    )
    return AlertTargets(config, TARGETS)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"instance": "db-1"}, ("db-1",)),
        ({"instance": "db-1:5432"}, ("db-1",)),
        ({"target": "db-10"}, ("db-10",)),
        ({"target": "db-2", "instance": "db-1:9187"}, ("db-1", "db-2")),
        ({"service": "api", "env": "prod", "target": "db-2"}, ("app-1", "db-2")),
        ({}, ()),
    ],
)
def test_labels_map_to_targets_sorted_and_unique(
    labels: dict[str, str], expected: tuple[str, ...]
) -> None:
    assert mapper().targets_of(labels) == expected


@pytest.mark.parametrize(
    "value",
    ["db-1|.*", ".*", "db-1:5432x", "xdb-1", "db-10", "db-1\n", "db-1:", "DB-1", " db-1"],
)
def test_matchers_are_anchored_so_crafted_values_match_nothing(value: str) -> None:
    assert mapper().targets_of({"instance": value}) == ()


def test_alternation_in_a_pattern_is_anchored_as_a_whole() -> None:
    assert mapper().targets_of({"service": "web", "env": "prod"}) == ("app-1", "db-2")
    assert mapper().targets_of({"service": "webx", "env": "prod"}) == ()
    assert mapper().targets_of({"service": "xapi", "env": "prod"}) == ()


def test_a_mapping_needs_all_its_labels_present() -> None:
    assert mapper().targets_of({"service": "web"}) == ()
    assert mapper().targets_of({"service": "web", "env": "prod-eu"}) == ()


@pytest.mark.parametrize("value", ["db-1|.*", ".*", "*", "db-1 ", "DB-1", "db", "unknown"])
def test_target_label_must_name_a_configured_target_exactly(value: str) -> None:
    assert mapper().targets_of({"target": value}) == ()


def test_target_label_can_be_switched_off() -> None:
    assert mapper(target_label=None).targets_of({"target": "db-1"}) == ()
    assert mapper(target_label="host").targets_of({"host": "db-1", "target": "db-2"}) == ("db-1",)


def test_mapped_targets_that_are_not_configured_are_left_out() -> None:
    config = AlertsConfig(
        mappings=(AlertMappingConfig(match={"job": "pg"}, targets=("db-1", "gone")),)
    )
    assert AlertTargets(config, TARGETS).targets_of({"job": "pg"}) == ("db-1",)


# --- sender authentication ---------------------------------------------------------------


def auth_config(*, bearer: bool = True, basic: bool = True) -> AlertsConfig:
    return AlertsConfig(
        bearer_token_sha256=sha(TOKEN) if bearer else None,
        basic=BasicAuthConfig(username="alertmanager", password_sha256=sha(PASSWORD))
        if basic
        else None,
    )


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {TOKEN}",
        f"bearer {TOKEN}",
        f"  Bearer   {TOKEN} ",
        basic_header("alertmanager", PASSWORD),
    ],
)
def test_configured_bearer_token_or_basic_credentials_are_accepted(header: str) -> None:
    check_webhook_auth(auth_config(), header)


def test_basic_password_may_contain_colons() -> None:
    config = AlertsConfig(basic=BasicAuthConfig(username="am", password_sha256=sha("a:b:c")))
    check_webhook_auth(config, basic_header("am", "a:b:c"))


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer ",
        f"Token {TOKEN}",
        TOKEN,
        basic_header("alertmanager", PASSWORD + "x"),
        basic_header("prometheus", PASSWORD),
        basic_header("alertmanager", ""),
        "Basic " + base64.b64encode(b"alertmanager").decode(),
        "Basic !!!not-base64!!!",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN}" + " " * 5000,
    ],
)
def test_wrong_credentials_are_refused_without_echoing_them(header: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        check_webhook_auth(auth_config(), header)
    assert caught.value.message == (
        "alert webhook credentials are wrong; expected Bearer or Basic authorization"
    )
    assert TOKEN not in str(caught.value.details)
    assert caught.value.details == {"schemes": ["Bearer", "Basic"]}


@pytest.mark.parametrize("header", [None, ""])
def test_missing_credentials_are_refused(header: str | None) -> None:
    with pytest.raises(Unauthenticated, match="credentials are missing; expected Bearer"):
        check_webhook_auth(auth_config(basic=False), header)


def test_a_scheme_that_is_not_configured_is_refused() -> None:
    with pytest.raises(Unauthenticated, match="expected Basic authorization"):
        check_webhook_auth(auth_config(bearer=False), f"Bearer {TOKEN}")
    with pytest.raises(Unauthenticated, match="expected Bearer authorization"):
        check_webhook_auth(auth_config(basic=False), basic_header("alertmanager", PASSWORD))


def test_webhooks_are_off_when_no_credentials_are_configured() -> None:
    with pytest.raises(Unauthenticated) as caught:
        check_webhook_auth(AlertsConfig(), f"Bearer {TOKEN}")
    assert "alerts.bearer_token_sha256 or alerts.basic" in caught.value.message
    assert TOKEN not in caught.value.message
