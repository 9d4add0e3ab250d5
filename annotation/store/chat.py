"""Chat turns: every question asked in the chat widget and the model's answer, with timings.

Kept apart from QA pairs because most turns are never rated; `chat_turn_to_qa` promotes the ones
worth rating, which is why this area builds on the scans/QA area. A promoted closed turn is the
choice the model's scores picked (answer text and letter agree, as the chat panel shows it), and
an empty or looping answer is refused (`model.inference.answer_checks`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from annotation.records import ChatTurnRecord
from annotation.schema import ChatTurn, ModelVersion, Scan
from annotation.store.rows import chat_record, model_version_id
from annotation.store.scans import ScansArea
from model.inference.answer_checks import degenerate_reason, read_closed
from model.inference.prompts import CHOICE_LETTERS, EMPTY_CHOICE


class ChatArea(ScansArea):
    """Chat turns and their promotion to QA pairs (part of `Store`)."""

    def add_chat_turn(self, scan_id: int, question: str, answer: str, *, conversation_id: str,
                      model_version: str | None = None, choices: Sequence[str] | None = None,
                      choice: str | None = None, choice_scores: Mapping[str, float] | None = None,
                      box: Sequence[float] | None = None, latency_first_token_s: float | None = None,
                      total_s: float | None = None, n_tokens: int | None = None, task: str | None = None,
                      encoding_s: float | None = None) -> int:
        """Record one question/answer of a conversation (turn index = next in that conversation);
        `task` is the template's task key (None for a free question)."""
        def work(session: Session) -> int:
            if session.get(Scan, scan_id) is None:
                raise KeyError(f"no scan with id {scan_id}")
            mv_id = model_version_id(session, model_version) if model_version else None
            index = session.scalar(select(func.coalesce(func.max(ChatTurn.turn_index) + 1, 0))
                                   .where(ChatTurn.conversation_id == conversation_id))
            turn = ChatTurn(scan_id=scan_id, conversation_id=conversation_id, turn_index=index,
                            question=question, answer=answer, choices=list(choices) if choices else None,
                            choice=choice, choice_scores=dict(choice_scores) if choice_scores else None,
                            box=list(box) if box is not None else None, model_version_id=mv_id,
                            latency_first_token_s=latency_first_token_s, total_s=total_s,
                            n_tokens=n_tokens, task=task, encoding_s=encoding_s)
            session.add(turn)
            session.flush()
            return turn.id

        return self._write_racing(work)

    def chat_turns(self, scan_id: int | None = None, conversation_id: str | None = None) -> list[ChatTurnRecord]:
        query = (select(ChatTurn, Scan.volume_name, ModelVersion.name)
                 .join(Scan, Scan.id == ChatTurn.scan_id)
                 .outerjoin(ModelVersion, ModelVersion.id == ChatTurn.model_version_id)
                 .order_by(ChatTurn.conversation_id, ChatTurn.turn_index))
        if scan_id is not None:
            query = query.where(ChatTurn.scan_id == scan_id)
        if conversation_id is not None:
            query = query.where(ChatTurn.conversation_id == conversation_id)
        with self.db.reading() as s:
            return [chat_record(t, v, m) for t, v, m in s.execute(query).tuples()]

    def chat_turn_to_qa(self, turn_id: int, task: str | None = None) -> int:
        """Turn a chat answer into a QA pair (source "chat") so it can be rated and curated; `task`
        defaults to the turn's own (else "chat"). ValueError for an answer that is not one."""
        with self.db.reading() as s:
            turn = s.get(ChatTurn, turn_id)
            if turn is None:
                raise KeyError(f"no chat turn with id {turn_id}")
        choices = _four_choices(turn.choices)
        answer = turn.answer
        if choices and turn.choice:
            answer = read_closed(turn.answer, choices, turn.choice).shown.split(". ", 1)[1]
        elif (reason := degenerate_reason(turn.answer)) is not None:
            raise ValueError(f"chat turn {turn_id} cannot be rated: {reason}")
        return self.add_qa_pair(
            turn.scan_id, task or turn.task or "chat", turn.question, answer, choices=choices,
            answer_choice=turn.choice if choices else None, source="chat",
            provenance={"chat_turn": turn.id, "conversation_id": turn.conversation_id,
                        "model_version_id": turn.model_version_id, "model_text": turn.answer})


def _four_choices(choices: list | None) -> list[str] | None:
    """A closed turn's choices in the 3D-RAD layout (unused slots as "-"), so yes/no keeps its two."""
    if not choices or len(choices) > len(CHOICE_LETTERS):
        return None
    return [str(c) for c in choices] + [EMPTY_CHOICE] * (len(CHOICE_LETTERS) - len(choices))
