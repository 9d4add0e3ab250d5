"""What every area of the Store shares: the Database it works on and the three ways it talks to it
beyond a plain read or write.

The areas (scans, queues, ratings, chat, models, exports) are mixins of one `Store`, so they share
a single engine and connection pool; keeping the write-error handling here means every area
reports a refused write, or survives a unique-key race, in the same words.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation.db import Database

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")


class StoreArea:
    """Base of the Store's areas; the facade (`annotation.store.Store`) sets `db`."""

    db: Database

    def _write_or_refuse(self, work: Callable[[Session], T], what: str) -> T:
        """Run the write; a constraint the database enforces (a bad task number, a duplicate name)
        reaches the caller as a ValueError naming `what`, not as a driver exception."""
        try:
            return self.db.write(work)
        except IntegrityError as exc:
            raise ValueError(f"{what} refused by the database: {exc.orig}") from None

    def _write_racing(self, work: Callable[[Session], T], attempts: int = 3) -> T:
        """Run the write, again if another writer created the same unique row at the same moment
        (the same turn index, the same pair/rater rating): the retry sees that row and takes the
        next index or updates it."""
        for attempt in range(attempts):
            try:
                return self.db.write(work)
            except IntegrityError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _read_frame(self, query: Select) -> pd.DataFrame:
        """`query`'s rows for the pandas side (agreement, curation, exports), one copy per row."""
        import pandas as pd  # deferred: pandas is heavy and only the frame readers need it

        with self.db.reading() as s:
            result = s.execute(query)
            # Plain tuples: pandas probes every SQLAlchemy Row for namedtuple fields, which costs
            # more than the copy (about 2x on the 170k pairs of a full 3D-RAD-scale export).
            return pd.DataFrame([tuple(r) for r in result], columns=list(result.keys()))
