"""Where the chat's model runs: device, precision and int8 weights, beside the model's name.

The same options as `ctvqa ask --device/--dtype/--quantize`, starting from $CTVQA_DEVICE /
$CTVQA_DTYPE / $CTVQA_QUANTIZE. napari's process never imports torch, so the device menu starts
with what needs no probing (auto, cpu) plus the one asked for, and learns the machine's GPUs from
the model process when a model has loaded. Changing a menu reloads the model (`changed`).
"""
from __future__ import annotations

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QWidget

from model.inference.devices import DTYPES, QUANTIZE_MODES, DeviceError, Runtime

_TIPS = {
    "device": "Where the model runs (auto: the first GPU when there is one, else the CPU). "
              "Same as ctvqa --device and $CTVQA_DEVICE.",
    "dtype": "Compute precision (auto: bfloat16 on a GPU; on a CPU the checkpoint's bf16 where the CPU "
             "has native bf16, else float32).",
    "quantize": "int8 weights for the language model: about 2x faster answers on a CPU, slightly "
                "different wording (docs/devices.md).",
}


class RuntimeChoice(QObject):
    """Three small menus in `widget`; `options()` is the dict `VLMWorker.load` takes."""

    changed = Signal()

    def __init__(self, asked: Runtime | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        if asked is None:
            try:
                asked = Runtime.from_options()
            except DeviceError:  # a malformed environment variable: the load reports it; menus start at auto
                asked = Runtime()
        self.widget = QWidget()
        row = QHBoxLayout(self.widget)
        row.setContentsMargins(0, 0, 0, 0)
        self.device = self._menu("device", ["auto", "cpu", *([asked.device] if asked.device not in ("auto", "cpu") else [])],
                                 asked.device)
        self.dtype = self._menu("dtype", list(DTYPES), asked.dtype)
        self.quantize = self._menu("quantize", list(QUANTIZE_MODES), asked.quantize)
        for menu in (self.device, self.dtype, self.quantize):
            row.addWidget(menu)

    def _menu(self, key: str, items: list[str], current: str) -> QComboBox:
        menu = QComboBox()
        menu.addItems(items)
        menu.setCurrentText(current)
        menu.setToolTip(_TIPS[key])
        menu.setAccessibleName(key)
        menu.activated.connect(lambda _index: self.changed.emit())
        return menu

    def options(self) -> dict[str, str]:
        return {"device": self.device.currentText(), "dtype": self.dtype.currentText(),
                "quantize": self.quantize.currentText()}

    def set_devices(self, devices: list[str]) -> None:
        """The machine's devices, as the model process found them (keeps the current choice)."""
        current = self.device.currentText()
        wanted = ["auto", *devices]
        if current not in wanted:
            wanted.append(current)
        if [self.device.itemText(i) for i in range(self.device.count())] == wanted:
            return
        self.device.blockSignals(True)
        self.device.clear()
        self.device.addItems(wanted)
        self.device.setCurrentText(current)
        self.device.blockSignals(False)

    def set_enabled(self, enabled: bool) -> None:
        for menu in (self.device, self.dtype, self.quantize):
            menu.setEnabled(enabled)
