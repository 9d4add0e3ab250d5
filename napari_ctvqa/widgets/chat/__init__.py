"""The chat dock widget: ask the local 3D VLM about the CT in the viewer (GitHub issue 7).

Why it is built this way: a radiologist keeps scrolling, panning and windowing while the model
answers, so the model runs in its own process (`napari_ctvqa.vlm_worker`; see
bench/chat_responsiveness.py) and the panel only reacts to its signals. The scan is sent once
and encoded once; follow-up questions reuse the encoding. Every finished turn goes into the
store (through `annotation.Store` only) and comes back when the panel is reopened on that scan.
Errors from the model, the store or the user's input are shown in the panel, never as tracebacks.

One module per concern, so each can grow without the others: `widget` ties them together,
`ct_choice` and `model_choice` pick the scan and the model, `history` is the store, `question`
and `templates` compose the question, `transcript`, `turn` and `score_bars` show the answers,
`overlays` draws on the CT.
"""
from napari_ctvqa.widgets.chat.widget import ChatWidget

__all__ = ["ChatWidget"]
