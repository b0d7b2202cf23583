"""What every figure of ours shares: matplotlib's object API on the Agg canvas (no pyplot, no
display, no global backend switch), PNG bytes with no software stamp (the same figure gives the
same bytes), and the loss unit. Light on purpose: the run report and the scaling report both
draw with it, and the scaling report must not import torch."""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
NATS = "nats per job-year"


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()
