"""Real OpenLDAP (``keyturn.lab.Slapd``): ACLs, memberof, hostile uids, restarts, bad binds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ldap
import ldap.dn
import ldap.filter
import pytest

from keyturn.lab import EXAMPLE_DIRECTORY_USERS as USERS
from keyturn.lab import Slapd
from keyturn.lab import example_directory as seeded_slapd

pytestmark = pytest.mark.integration

HOSTILE_UIDS = ('a,b+c="d"<e>;#f', "*)(uid=*))(|(uid=*", "back\\slash (x) *", " zoë ")


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[Slapd]:
    server = seeded_slapd(tmp_path / "slapd")
    yield server
    server.stop()


def parsed(dn: str) -> list[list[tuple[str, str]]]:
    """A DN as (lowercased type, value) pairs: slapd re-escapes DNs its own way (``\\2C``)."""
    return [[(a.lower(), v) for a, v, _ in rdn] for rdn in ldap.dn.str2dn(dn)]


def normalized(dn: str) -> str:
    """A DN in a comparable form: values lowercased too (uid and cn match case-insensitively)."""
    return repr([[(a, v.lower()) for a, v in rdn] for rdn in parsed(dn)])


def same_dns(left: list[str], right: list[str]) -> bool:
    return [parsed(dn) for dn in left] == [parsed(dn) for dn in right]


def user(slapd: Slapd, uid: str) -> str:
    return str(
        ldap.dn.dn2str([[("uid", uid, ldap.AVA_STRING)], *ldap.dn.str2dn(slapd.people_base)])
    )


def group(slapd: Slapd, cn: str) -> str:
    return str(ldap.dn.dn2str([[("cn", cn, ldap.AVA_STRING)], *ldap.dn.str2dn(slapd.groups_base)]))


def find_uid(slapd: Slapd, uid: str) -> list[str]:
    conn = slapd.connect(as_root=False)
    try:
        query = ldap.filter.filter_format("(uid=%s)", [uid])
        found = conn.search_s(slapd.people_base, ldap.SCOPE_SUBTREE, query, ["uid"])
    finally:
        conn.unbind_s()
    return [dn for dn, _ in found]


def test_seeded_directory_has_the_example_users_and_groups(slapd: Slapd) -> None:
    backup = user(slapd, "svc-backup")
    for uid in USERS:
        assert same_dns(find_uid(slapd, uid), [user(slapd, uid)])
    assert slapd.members(group(slapd, "db-admins")) == {backup}
    assert slapd.members(group(slapd, "app-deployers")) == {backup}


def test_service_account_writes_membership_and_nothing_else(slapd: Slapd) -> None:
    db_admins, alice = group(slapd, "db-admins"), user(slapd, "alice")
    conn = slapd.connect(as_root=False)
    try:
        conn.modify_s(db_admins, [(ldap.MOD_ADD, "member", [alice.encode()])])
        assert alice in slapd.members(db_admins)
        conn.modify_s(db_admins, [(ldap.MOD_DELETE, "member", [alice.encode()])])
        assert alice not in slapd.members(db_admins)

        deployers = group(slapd, "app-deployers")
        conn.modify_s(deployers, [(ldap.MOD_ADD, "uniqueMember", [alice.encode()])])
        assert alice in slapd.members(deployers)

        with pytest.raises(ldap.INSUFFICIENT_ACCESS):
            conn.modify_s(alice, [(ldap.MOD_REPLACE, "cn", [b"Eve"])])
        with pytest.raises(ldap.INSUFFICIENT_ACCESS):
            conn.modify_s(db_admins, [(ldap.MOD_REPLACE, "description", [b"owned"])])
        with pytest.raises(ldap.INSUFFICIENT_ACCESS):
            conn.add_s(
                group(slapd, "rogue"),
                [("objectClass", [b"groupOfNames"]), ("cn", [b"rogue"]), ("member", [b""])],
            )
    finally:
        conn.unbind_s()
    assert same_dns(find_uid(slapd, "alice"), [alice])
    conn = slapd.connect()
    try:
        [(_, entry)] = conn.search_s(alice, ldap.SCOPE_BASE, "(objectClass=*)", ["cn"])
    finally:
        conn.unbind_s()
    assert entry["cn"] == [b"alice"]


def test_member_of_follows_group_membership(slapd: Slapd) -> None:
    db_admins, bob = group(slapd, "db-admins"), user(slapd, "bob")
    assert slapd.member_of(bob) == set()
    conn = slapd.connect(as_root=False)
    try:
        conn.modify_s(db_admins, [(ldap.MOD_ADD, "member", [bob.encode()])])
        assert {normalized(dn) for dn in slapd.member_of(bob)} == {normalized(db_admins)}
        conn.modify_s(db_admins, [(ldap.MOD_DELETE, "member", [bob.encode()])])
        assert slapd.member_of(bob) == set()
    finally:
        conn.unbind_s()


def test_member_of_covers_group_of_names_only(slapd: Slapd) -> None:
    """One memberof overlay with its defaults: groupOfUniqueNames is not reflected in memberOf."""
    backup = user(slapd, "svc-backup")
    assert {normalized(dn) for dn in slapd.member_of(backup)} == {
        normalized(group(slapd, "db-admins"))
    }


@pytest.mark.parametrize("uid", HOSTILE_UIDS)
def test_hostile_uid_is_stored_escaped_and_found_exactly(slapd: Slapd, uid: str) -> None:
    dn = slapd.add_user(uid)
    assert dn == user(slapd, uid)
    assert parsed(dn)[0] == [("uid", uid)]
    found = find_uid(slapd, uid)
    assert same_dns(found, [dn])
    db_admins = group(slapd, "db-admins")
    conn = slapd.connect(as_root=False)
    try:
        conn.modify_s(db_admins, [(ldap.MOD_ADD, "member", [dn.encode()])])
    finally:
        conn.unbind_s()
    stored = slapd.members(db_admins)
    assert dn not in stored, "slapd stores DN values re-escaped (hex); compare DNs parsed"
    assert parsed(dn) in [parsed(member) for member in stored]
    assert {normalized(g) for g in slapd.member_of(dn)} == {normalized(db_admins)}


def test_hostile_uids_side_by_side_do_not_match_each_other(slapd: Slapd) -> None:
    dns = [slapd.add_user(uid) for uid in HOSTILE_UIDS]
    assert len(set(dns)) == len(HOSTILE_UIDS)
    for uid, dn in zip(HOSTILE_UIDS, dns, strict=True):
        assert same_dns(find_uid(slapd, uid), [dn])


def test_restart_on_the_same_workdir_keeps_the_data(slapd: Slapd) -> None:
    db_admins, carol = group(slapd, "db-admins"), user(slapd, "carol")
    conn = slapd.connect(as_root=False)
    try:
        conn.modify_s(db_admins, [(ldap.MOD_ADD, "member", [carol.encode()])])
    finally:
        conn.unbind_s()
    url = slapd.url
    slapd.stop()
    with pytest.raises(ldap.SERVER_DOWN):
        slapd.connect()
    slapd.stop()
    slapd.start()
    assert slapd.url == url
    assert carol in slapd.members(db_admins)
    assert same_dns(find_uid(slapd, "carol"), [carol])
    slapd.connect(as_root=False).unbind_s()


def test_wrong_password_is_refused(slapd: Slapd) -> None:
    for dn in (slapd.service_dn, slapd.root_dn, user(slapd, "mallory")):
        conn = ldap.initialize(slapd.url)
        try:
            with pytest.raises(ldap.INVALID_CREDENTIALS):
                conn.simple_bind_s(dn, "not-the-password")
        finally:
            conn.unbind_s()


def test_anonymous_may_not_search(slapd: Slapd) -> None:
    conn = ldap.initialize(slapd.url)
    try:
        conn.simple_bind_s("", "")
        with pytest.raises(ldap.INSUFFICIENT_ACCESS):
            conn.search_s(slapd.suffix, ldap.SCOPE_SUBTREE, "(objectClass=*)")
    finally:
        conn.unbind_s()


def test_passwords_are_not_readable_by_the_service_account(slapd: Slapd) -> None:
    conn = slapd.connect(as_root=False)
    try:
        found = conn.search_s(slapd.service_dn, ldap.SCOPE_BASE, "(objectClass=*)", ["*"])
    finally:
        conn.unbind_s()
    assert [set(entry) for _, entry in found] == [{"objectClass", "cn"}]
    assert slapd.root_password not in (slapd.workdir / "slapd.conf").read_text()
    assert "{SSHA}" in (slapd.workdir / "slapd.conf").read_text()
