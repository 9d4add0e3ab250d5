"""Ratings: each annotator's own five scores and consistency verdict per pair, or a skip/flag with
its reason.

A rating is changed in place, but an earlier judgement is never lost: a real change first copies
the old version to rating_history. `write_rating` works inside the caller's transaction because
the ratings CSV importer writes a whole file in one.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from annotation.records import RatingRecord, RatingVersion
from annotation.rubric import SCORE_KEYS, annotator_name, seconds_spent, validate_scores
from annotation.schema import QAPair, Rater, Rating, RatingHistory, utcnow
from annotation.store.base import StoreArea
from annotation.store.rows import get_or_create_rater_id, rating_record, rating_version

if TYPE_CHECKING:
    import pandas as pd

_VERSIONED = (*SCORE_KEYS, "consistent", "note", "status", "reason", "seconds_spent")


class RatingsArea(StoreArea):
    """Ratings, skips, flags and their history (part of `Store`)."""

    def rating(self, annotator: str, qa_id: int, repeat: bool = False) -> RatingRecord | None:
        """The annotator's own rating of the pair (never anybody else's); `repeat` reads their
        second, blind judgement of a pair shown to them twice."""
        annotator = annotator_name(annotator)
        with self.db.reading() as s:
            r = s.scalars(select(Rating).join(Rater, Rater.id == Rating.rater_id)
                          .where(Rater.name == annotator, Rating.qa_id == qa_id,
                                 Rating.is_repeat == repeat)).one_or_none()
            return rating_record(r, annotator) if r else None

    def save_rating(self, annotator: str, qa_id: int, scores: Mapping[str, int] | Sequence[int],
                    consistent: bool, note: str = "", seconds: float = 0.0, repeat: bool = False) -> RatingRecord:
        """Insert or update the annotator's rating (the earlier version goes to rating_history).
        `seconds` is added to the time already spent on this pair. Raises ValueError naming the
        dimension for a missing or out-of-range score."""
        if not isinstance(scores, Mapping):
            values = list(scores)
            if len(values) != len(SCORE_KEYS):
                raise ValueError(f"expected {len(SCORE_KEYS)} scores ({', '.join(SCORE_KEYS)}), got {len(values)}")
            scores = dict(zip(SCORE_KEYS, values))
        clean = validate_scores(scores)
        if not isinstance(consistent, bool):
            raise ValueError(f"consistent must be True or False, got {consistent!r}")
        if not isinstance(note, str):
            raise ValueError(f"note must be text, got {note!r}")
        return self._upsert_rating(annotator, qa_id, {**clean, "consistent": consistent, "note": note,
                                                      "status": "rated", "reason": None}, seconds, repeat)

    def skip(self, annotator: str, qa_id: int, reason: str, seconds: float = 0.0,
             repeat: bool = False) -> RatingRecord:
        """Mark the pair skipped by this annotator (e.g. "cannot judge: scan missing")."""
        return self._mark(annotator, qa_id, "skipped", reason, seconds, repeat)

    def flag(self, annotator: str, qa_id: int, reason: str, seconds: float = 0.0,
             repeat: bool = False) -> RatingRecord:
        """Mark the pair as problematic (wrong answer, unsafe, duplicate...); the reason is kept."""
        return self._mark(annotator, qa_id, "flagged", reason, seconds, repeat)

    def _mark(self, annotator: str, qa_id: int, status: str, reason: str, seconds: float,
              repeat: bool) -> RatingRecord:
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"a reason is required to mark a pair {status}")
        return self._upsert_rating(annotator, qa_id, {"status": status, "reason": reason.strip()}, seconds, repeat)

    def _upsert_rating(self, annotator: str, qa_id: int, values: dict[str, Any],
                       seconds: float, repeat: bool = False) -> RatingRecord:
        annotator, seconds = annotator_name(annotator), seconds_spent(seconds)

        def work(session: Session) -> RatingRecord:
            return rating_record(write_rating(session, annotator, qa_id, values, seconds, repeat), annotator)

        return self._write_racing(work)

    def rating_history(self, annotator: str, qa_id: int, repeat: bool = False) -> list[RatingVersion]:
        """Earlier versions of the annotator's rating of the pair, oldest first (`repeat`: of their
        blind second judgement, which has a history of its own)."""
        annotator = annotator_name(annotator)
        with self.db.reading() as s:
            rows = s.scalars(select(RatingHistory).join(Rater, Rater.id == RatingHistory.rater_id)
                             .join(Rating, Rating.id == RatingHistory.rating_id)
                             .where(Rater.name == annotator, RatingHistory.qa_id == qa_id,
                                    Rating.is_repeat == repeat)
                             .order_by(RatingHistory.id)).all()
            return [rating_version(h, annotator) for h in rows]

    def ratings_frame(self, repeats: bool = False) -> pd.DataFrame:
        """Every first rating: qa_id, rater, task, the five scores, consistent, status, seconds
        (the input of annotation.agreement and annotation.curation); `repeats=True` gives the
        second judgements of pairs shown twice instead (intra-rater agreement only)."""
        frame = self._read_frame(
            select(Rating.qa_id, Rater.name.label("rater"), QAPair.task,
                   *[getattr(Rating, k) for k in SCORE_KEYS], Rating.consistent, Rating.status,
                   Rating.seconds_spent.label("seconds"))
            .join(Rater, Rater.id == Rating.rater_id).join(QAPair, QAPair.id == Rating.qa_id)
            .where(Rating.is_repeat == repeats)
            .order_by(Rating.qa_id, Rater.name))
        for key in SCORE_KEYS:
            frame[key] = frame[key].astype("Int64")
        frame["consistent"] = frame["consistent"].astype("boolean")
        return frame


def write_rating(session: Session, annotator: str, qa_id: int, values: Mapping[str, Any],
                 seconds: float = 0.0, repeat: bool = False) -> Rating:
    """Insert or update one rating inside the caller's transaction (the ratings CSV importer
    writes a whole file in one). A real change first copies the old version to rating_history;
    `seconds` is added to the time spent. The annotator's name is trimmed and both it and the time
    are checked here too, since importers call this directly."""
    annotator, seconds = annotator_name(annotator), seconds_spent(seconds)
    if session.scalar(select(QAPair.id).where(QAPair.id == qa_id)) is None:
        raise KeyError(f"no QA pair with id {qa_id}")
    rater_id = get_or_create_rater_id(session, annotator, "human")
    rating = session.scalars(select(Rating).where(Rating.qa_id == qa_id, Rating.rater_id == rater_id,
                                                  Rating.is_repeat == repeat)
                             .with_for_update()).one_or_none()
    now = utcnow()
    if rating is None:
        rating = Rating(qa_id=qa_id, rater_id=rater_id, is_repeat=repeat, created_at=now, seconds_spent=0.0, note="",
                        **{k: None for k in SCORE_KEYS})
        session.add(rating)
    elif any(getattr(rating, k) != v for k, v in values.items()):
        session.add(RatingHistory(rating_id=rating.id, qa_id=qa_id, rater_id=rater_id,
                                  valid_from=rating.updated_at, replaced_at=now,
                                  **{k: getattr(rating, k) for k in _VERSIONED}))
    for key, value in values.items():
        setattr(rating, key, value)
    rating.seconds_spent = (rating.seconds_spent or 0.0) + float(seconds)
    rating.updated_at = now
    session.flush()
    return rating
