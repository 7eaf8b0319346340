"""The break-glass part of the Store contract: offline kits and post-incident reviews behave alike
in InMemoryStore, SqlStore on SQLite and SqlStore on PostgreSQL (``store`` fixture, as in
``test_store_contract.py``)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from keyturn.adapters.break_glass_kit import SEALED_ACCOUNT, new_kit
from keyturn.domain.break_glass import (
    BreakGlassMode,
    KitInfo,
    PostIncidentReview,
    ReviewStatus,
    ReviewVerdict,
)
from keyturn.domain.errors import Conflict, NotFound
from keyturn.ports import Store

T0 = datetime(2026, 11, 17, 2, 45, 0, 123456, tzinfo=UTC)
KIT_T0 = T0.replace(microsecond=0)  # kits are made at whole seconds (their file keeps no more)


class _Boom(Exception):
    """Raised inside a transaction to make it roll back."""


def a_kit(created_at: datetime = KIT_T0, *, sealed: bool = False) -> KitInfo:
    """A fresh 2-of-3 kit (random key), optionally with a sealed directory password."""
    secrets = {SEALED_ACCOUNT: ("uid=breakglass,ou=people,dc=example,dc=org", "pw")}
    kit, _ = new_kit(threshold=2, shares=3, now=created_at, sealed=secrets if sealed else None)
    return kit


def online_review(
    n: int, *, opened_at: datetime | None = None, **changes: object
) -> PostIncidentReview:
    """Review ``pir_NNNN`` of an online use, opened ``n`` minutes after T0, due 72 h later."""
    at = opened_at if opened_at is not None else T0 + timedelta(minutes=n)
    review = PostIncidentReview(
        id=f"pir_{n:04d}",
        mode=BreakGlassMode.ONLINE,
        user_id="alice",
        role="db-admin",
        target="db-1",
        justification=f"INC-{n}: db-1 primary down, failing over by hand",
        used_at=at,
        opened_at=at,
        due_at=at + timedelta(hours=72),
        reviewers=("carol", "dave", "erin", "sam"),
        grant_id=f"grt_{n:04d}",
        request_id=f"req_{n:04d}",
    )
    return dataclasses.replace(review, **changes)  # type: ignore[arg-type]


def offline_review(n: int, record_id: str, kit_id: str, **changes: object) -> PostIncidentReview:
    """Review ``pir_NNNN`` of an imported offline record."""
    return online_review(
        n,
        mode=BreakGlassMode.OFFLINE,
        grant_id=None,
        request_id=None,
        record_id=record_id,
        kit_id=kit_id,
        **changes,
    )


TIMES = ("used_at", "opened_at", "due_at", "closed_at", "overdue_alerted_at")


def assert_aware_utc(review: PostIncidentReview, want: PostIncidentReview) -> None:
    """Every time field equal to the microsecond, with tzinfo UTC."""
    for name in TIMES:
        got, expected = getattr(review, name), getattr(want, name)
        assert got == expected, name
        if expected is None:
            continue
        assert got.tzinfo is not None, name
        assert got.utcoffset() == timedelta(0), name
        assert got.microsecond == expected.microsecond, name


class TestKitContract:
    """Offline break-glass kits: public description in, the same out."""

    def test_kit_round_trips(self, store: Store) -> None:
        """Every field, the sealed secret included, reads back equal."""
        kit = a_kit(sealed=True)
        with store.transaction() as tx:
            tx.add_kit(kit)
        with store.transaction() as tx:
            got = tx.get_kit(kit.id)
            assert tx.kits() == [got]
        assert got == kit
        assert got.sealed[SEALED_ACCOUNT] == kit.sealed[SEALED_ACCOUNT]
        assert got.created_at.utcoffset() == timedelta(0)
        assert (got.spent_at, got.spent_by, got.retired_at) == (None, None, None)
        assert got.state == "ready"

    def test_kit_created_at_keeps_its_microseconds(self, store: Store) -> None:
        """A KitInfo whose created_at has microseconds reads back equal (the store's column is
        the source, not the whole-second copy in the public description)."""
        kit = dataclasses.replace(a_kit(), created_at=T0)
        with store.transaction() as tx:
            tx.add_kit(kit)
        with store.transaction() as tx:
            assert tx.get_kit(kit.id).created_at == T0

    def test_kit_added_with_marks_round_trips(self, store: Store) -> None:
        """A kit stored already spent and retired keeps those marks, to the microsecond."""
        kit = dataclasses.replace(
            a_kit(),
            spent_at=T0 + timedelta(hours=1),
            spent_by="bg_0123456789abcdef0123",
            retired_at=T0 + timedelta(days=1, microseconds=7),
        )
        with store.transaction() as tx:
            tx.add_kit(kit)
        with store.transaction() as tx:
            assert tx.get_kit(kit.id) == kit

    def test_same_kit_twice_conflicts(self, store: Store) -> None:
        """Kit ids are unique."""
        kit = a_kit()
        with store.transaction() as tx:
            tx.add_kit(kit)
        with pytest.raises(Conflict), store.transaction() as tx:
            tx.add_kit(dataclasses.replace(kit, threshold=3))
        with store.transaction() as tx:
            assert tx.kits() == [kit]

    def test_unknown_kit_is_not_found(self, store: Store) -> None:
        """get_kit and save_kit of an id never added raise NotFound."""
        with store.transaction() as tx:
            with pytest.raises(NotFound):
                tx.get_kit("kit_0000000000000000")
            with pytest.raises(NotFound):
                tx.save_kit(a_kit())
            assert tx.kits() == []

    def test_save_kit_keeps_only_the_marks(self, store: Store) -> None:
        """save_kit writes spent_at/spent_by/retired_at; the public description is immutable."""
        kit = a_kit()
        with store.transaction() as tx:
            tx.add_kit(kit)
        spent = dataclasses.replace(
            kit, spent_at=T0 + timedelta(hours=2), spent_by="bg_aaaaaaaaaaaaaaaaaaaa"
        )
        with store.transaction() as tx:
            tx.save_kit(dataclasses.replace(spent, threshold=5, shares=9, fingerprint="SHA256:x"))
        with store.transaction() as tx:
            assert tx.get_kit(kit.id) == spent
            assert tx.get_kit(kit.id).state == "spent"
        retired = dataclasses.replace(spent, retired_at=T0 + timedelta(days=3))
        with store.transaction() as tx:
            tx.save_kit(retired)
        with store.transaction() as tx:
            assert tx.get_kit(kit.id) == retired
            assert tx.get_kit(kit.id).state == "retired"

    def test_kits_are_newest_first(self, store: Store) -> None:
        """kits() orders by creation time, newest first, whatever the insertion order."""
        middle = a_kit(KIT_T0)
        oldest = a_kit(KIT_T0 - timedelta(days=30))
        newest = a_kit(KIT_T0 + timedelta(days=30))
        with store.transaction() as tx:
            for kit in (middle, oldest, newest):
                tx.add_kit(kit)
        with store.transaction() as tx:
            assert [k.id for k in tx.kits()] == [newest.id, middle.id, oldest.id]


class TestPostIncidentReviewContract:
    """Post-incident reviews: round trip, uniqueness of offline records, queries, claims."""

    def test_open_online_review_round_trips(self, store: Store) -> None:
        """An open online review reads back equal (reviewers as a tuple), locked or not."""
        review = online_review(1)
        with store.transaction() as tx:
            tx.add_post_incident_review(review)
        with store.transaction() as tx:
            got = tx.get_post_incident_review(review.id)
            assert tx.get_post_incident_review(review.id, lock=True) == review
        assert got == review
        assert isinstance(got.reviewers, tuple)
        assert got.reviewers == ("carol", "dave", "erin", "sam")
        assert got.mode is BreakGlassMode.ONLINE
        assert got.status is ReviewStatus.OPEN
        assert got.verdict is None
        assert_aware_utc(got, review)

    def test_closed_offline_review_round_trips_every_field(self, store: Store) -> None:
        """Every field set (offline ids, verdict, comment, closer, both marks) reads back equal,
        times aware UTC to the microsecond."""
        at = datetime(2026, 11, 17, 23, 59, 59, 999999, tzinfo=UTC)
        review = offline_review(
            2,
            "bg_0123456789abcdef0123",
            "kit_0123456789abcdef",
            used_at=at - timedelta(hours=3, microseconds=1),
            opened_at=at,
            due_at=at + timedelta(microseconds=1),
            reviewers=("sam",),
            status=ReviewStatus.CLOSED,
            verdict=ReviewVerdict.UNJUSTIFIED,
            comment="should have paged the DBA on call; line two \\n escaped",
            closed_by="sam",
            closed_at=at + timedelta(hours=80, microseconds=3),
            overdue_alerted_at=at + timedelta(hours=72, microseconds=5),
        )
        with store.transaction() as tx:
            tx.add_post_incident_review(review)
        with store.transaction() as tx:
            got = tx.get_post_incident_review(review.id)
        assert got == review
        assert got.mode is BreakGlassMode.OFFLINE
        assert got.status is ReviewStatus.CLOSED
        assert got.verdict is ReviewVerdict.UNJUSTIFIED
        assert got.due_at == datetime(2026, 11, 18, tzinfo=UTC)  # crossed midnight exactly
        assert_aware_utc(got, review)

    def test_empty_reviewers_round_trip(self, store: Store) -> None:
        """No reviewers (only admins may close) is stored as an empty tuple."""
        review = online_review(1, reviewers=())
        with store.transaction() as tx:
            tx.add_post_incident_review(review)
        with store.transaction() as tx:
            assert tx.get_post_incident_review(review.id).reviewers == ()

    def test_same_id_twice_conflicts(self, store: Store) -> None:
        """Review ids are unique."""
        with store.transaction() as tx:
            tx.add_post_incident_review(online_review(1))
        with pytest.raises(Conflict), store.transaction() as tx:
            tx.add_post_incident_review(online_review(1, target="db-2"))
        with store.transaction() as tx:
            assert tx.get_post_incident_review("pir_0001").target == "db-1"

    def test_same_record_twice_conflicts(self, store: Store) -> None:
        """One review per offline record: a second review of the record is a Conflict (the
        replay guard of audit import)."""
        record = "bg_0123456789abcdef0123"
        first = offline_review(1, record, "kit_0123456789abcdef")
        with store.transaction() as tx:
            tx.add_post_incident_review(first)
        with pytest.raises(Conflict), store.transaction() as tx:
            tx.add_post_incident_review(offline_review(2, record, "kit_0123456789abcdef"))
        with store.transaction() as tx:
            assert tx.post_incident_reviews() == [first]

    def test_online_reviews_without_record_do_not_conflict(self, store: Store) -> None:
        """Many reviews have no record id: that is no duplicate."""
        with store.transaction() as tx:
            for n in (1, 2, 3):
                tx.add_post_incident_review(online_review(n))
        with store.transaction() as tx:
            assert len(tx.post_incident_reviews()) == 3

    def test_unknown_review_is_not_found(self, store: Store) -> None:
        """get and save of a review never added raise NotFound."""
        with store.transaction() as tx:
            with pytest.raises(NotFound):
                tx.get_post_incident_review("pir_missing")
            with pytest.raises(NotFound):
                tx.get_post_incident_review("pir_missing", lock=True)
            with pytest.raises(NotFound):
                tx.save_post_incident_review(online_review(9))

    def test_saved_review_keeps_every_change(self, store: Store) -> None:
        """The overdue mark, then the close, persist."""
        review = online_review(1)
        with store.transaction() as tx:
            tx.add_post_incident_review(review)
        alerted = dataclasses.replace(review, overdue_alerted_at=review.due_at)
        with store.transaction() as tx:
            tx.save_post_incident_review(alerted)
        with store.transaction() as tx:
            assert tx.get_post_incident_review(review.id) == alerted
        closed = alerted.close(
            "carol", ReviewVerdict.JUSTIFIED, "primary was down", review.due_at + timedelta(1)
        )
        with store.transaction() as tx:
            tx.save_post_incident_review(closed)
        with store.transaction() as tx:
            got = tx.get_post_incident_review(review.id)
        assert got == closed
        assert (got.status, got.verdict, got.closed_by) == (
            ReviewStatus.CLOSED,
            ReviewVerdict.JUSTIFIED,
            "carol",
        )

    def test_review_for_record(self, store: Store) -> None:
        """The review of an imported record, None for a record never imported."""
        review = offline_review(1, "bg_aaaaaaaaaaaaaaaaaaaa", "kit_0123456789abcdef")
        with store.transaction() as tx:
            tx.add_post_incident_review(online_review(2))
            tx.add_post_incident_review(review)
        with store.transaction() as tx:
            assert tx.review_for_record("bg_aaaaaaaaaaaaaaaaaaaa") == review
            assert tx.review_for_record("bg_bbbbbbbbbbbbbbbbbbbb") is None

    def test_reviews_newest_first_filtered_and_limited(self, store: Store) -> None:
        """post_incident_reviews orders by opening time, newest first; filters by status;
        honours the limit."""
        with store.transaction() as tx:
            for n in (3, 1, 5, 2, 4):
                review = online_review(n)
                if n in (2, 5):
                    review = review.close("sam", ReviewVerdict.JUSTIFIED, "ok", T0 + timedelta(1))
                tx.add_post_incident_review(review)
        with store.transaction() as tx:
            assert [r.id for r in tx.post_incident_reviews()] == [
                f"pir_{n:04d}" for n in (5, 4, 3, 2, 1)
            ]
            assert [r.id for r in tx.post_incident_reviews(status=ReviewStatus.OPEN)] == [
                "pir_0004",
                "pir_0003",
                "pir_0001",
            ]
            assert [r.id for r in tx.post_incident_reviews(status=ReviewStatus.CLOSED)] == [
                "pir_0005",
                "pir_0002",
            ]
            assert [r.id for r in tx.post_incident_reviews(limit=2)] == ["pir_0005", "pir_0004"]
            assert [r.id for r in tx.post_incident_reviews(status=ReviewStatus.OPEN, limit=1)] == [
                "pir_0004"
            ]

    def test_reviews_opened_at_the_same_time_are_ordered_by_id(self, store: Store) -> None:
        """Ties on the opening time are broken by id, the same way in every store."""
        with store.transaction() as tx:
            for n in (2, 3, 1):
                tx.add_post_incident_review(online_review(n, opened_at=T0))
        with store.transaction() as tx:
            assert [r.id for r in tx.post_incident_reviews()] == [
                "pir_0001",
                "pir_0002",
                "pir_0003",
            ]

    def test_claim_overdue_takes_only_open_due_unalerted_reviews(self, store: Store) -> None:
        """Open, due_at ≤ now, not yet alerted; earliest due first; up to the limit."""
        now = T0 + timedelta(days=10)
        due = {
            1: now - timedelta(hours=1),
            2: now - timedelta(days=2),
            3: now,  # exactly due
            4: now + timedelta(microseconds=1),  # not yet
            5: now - timedelta(days=3),  # closed
            6: now - timedelta(days=4),  # already alerted
            7: now - timedelta(minutes=5),
        }
        with store.transaction() as tx:
            for n, at in due.items():
                review = online_review(n, due_at=at)
                if n == 5:
                    review = review.close("sam", ReviewVerdict.JUSTIFIED, "ok", at)
                if n == 6:
                    review = dataclasses.replace(review, overdue_alerted_at=at)
                tx.add_post_incident_review(review)
        with store.transaction() as tx:
            claimed = tx.claim_overdue_reviews(now, 10)
            assert [r.id for r in claimed] == ["pir_0002", "pir_0001", "pir_0007", "pir_0003"]
            assert all(r.status is ReviewStatus.OPEN for r in claimed)
        with store.transaction() as tx:
            assert [r.id for r in tx.claim_overdue_reviews(now, 2)] == ["pir_0002", "pir_0001"]
            assert tx.claim_overdue_reviews(T0, 10) == []

    def test_marked_reviews_are_not_claimed_again(self, store: Store) -> None:
        """Once saved with overdue_alerted_at, a review leaves the claim."""
        now = T0 + timedelta(days=10)
        with store.transaction() as tx:
            tx.add_post_incident_review(online_review(1))
            tx.add_post_incident_review(online_review(2))
        with store.transaction() as tx:
            [first, second] = tx.claim_overdue_reviews(now, 10)
            tx.save_post_incident_review(dataclasses.replace(first, overdue_alerted_at=now))
        with store.transaction() as tx:
            assert [r.id for r in tx.claim_overdue_reviews(now, 10)] == [second.id]


class TestBreakGlassRollback:
    """An exception inside a transaction undoes kit and review writes alike."""

    def test_failed_transaction_rolls_back_kits_and_reviews(self, store: Store) -> None:
        """Added and saved kits and reviews are all undone; earlier commits stay."""
        kit = a_kit()
        review = online_review(1)
        with store.transaction() as tx:
            tx.add_kit(kit)
            tx.add_post_incident_review(review)
        other = a_kit(KIT_T0 + timedelta(days=1))

        def write_then_fail() -> None:
            with store.transaction() as tx:
                tx.add_kit(other)
                tx.save_kit(
                    dataclasses.replace(kit, spent_at=T0, spent_by="bg_cccccccccccccccccccc")
                )
                tx.add_post_incident_review(offline_review(2, "bg_cccccccccccccccccccc", kit.id))
                tx.save_post_incident_review(
                    review.close("sam", ReviewVerdict.JUSTIFIED, "ok", T0 + timedelta(1))
                )
                assert tx.review_for_record("bg_cccccccccccccccccccc") is not None  # visible
                assert len(tx.kits()) == 2
                raise _Boom

        with pytest.raises(_Boom):
            write_then_fail()
        with store.transaction() as tx:
            assert tx.kits() == [kit]
            with pytest.raises(NotFound):
                tx.get_kit(other.id)
            assert tx.get_kit(kit.id).spent_at is None
            assert tx.review_for_record("bg_cccccccccccccccccccc") is None
            assert tx.post_incident_reviews() == [review]
            assert tx.get_post_incident_review(review.id).status is ReviewStatus.OPEN
