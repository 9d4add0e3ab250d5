"""The crosshair of one view: two lines through the linked point, drawn on the view's canvas.

Why a vispy visual and not a napari Shapes layer: paging through slices moves the crosshair in
three viewers on every step, and setting a Shapes layer's data re-triangulates its shapes,
recomputes the viewer's world extent (the lines lie on the slice, so their extent moves with it)
and rebuilds its shader programs. Measured under Xvfb on 2 cores (`bench/chat_responsiveness.py
--compare`), that was about 60 ms of every slice step on the GUI thread, and the idle reading room
stalled the viewer for up to 139 ms. A line visual in the canvas's scene only uploads four
vertices. It also keeps the crosshair out of the layer list, where it was one more layer to skip.
"""
from __future__ import annotations

from typing import Any

import numpy as np

COLOUR = (1.0, 0.824, 0.247, 0.8)  # #ffd23f, a little transparent
ON_TOP = 1_000_000  # drawn after every layer (napari orders layer visuals by list position)


def segments(point: Any, order: tuple[int, ...], box: np.ndarray) -> np.ndarray:
    """(4, 2) vertices of the two lines through world `point` across `box` in a view showing
    `order`'s last two axes (rows, columns), in the scene's (x = column, y = row) world order."""
    point = np.asarray(point, dtype=float)
    rows, cols = order[-2], order[-1]
    return np.array([[box[0][cols], point[rows]], [box[1][cols], point[rows]],
                     [point[cols], box[0][rows]], [point[cols], box[1][rows]]], dtype=np.float32)


class Crosshair:
    """The crosshair visual of one canvas; hidden until `draw` is given a point."""

    def __init__(self, scene: Any) -> None:
        # deferred: vispy's scene loads with napari's Qt side
        from vispy.scene.visuals import Line

        self.visual = Line(pos=np.zeros((4, 2), dtype=np.float32), color=COLOUR, connect="segments",
                           method="gl", width=1, parent=scene)
        self.visual.order = ON_TOP
        self.visual.set_gl_state("translucent", depth_test=False)
        self.visual.visible = False

    @property
    def shown(self) -> bool:
        return bool(self.visual.visible)

    def draw(self, point: Any, order: tuple[int, ...], box: np.ndarray, flat: bool = True) -> None:
        """Lines through `point` in the view of dims `order`; hidden when the view is not a 2-D
        slice (`flat` False: in 3-D two lines on one plane would float inside the volume)."""
        if not flat:
            self.hide()
            return
        self.visual.set_data(pos=segments(point, order, box))
        self.visual.visible = True

    def hide(self) -> None:
        self.visual.visible = False

    def remove(self) -> None:
        self.visual.parent = None
