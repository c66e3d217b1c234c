"""Matplotlib backend used inside the sandbox (MPLBACKEND=module://ace_mpl_backend).

`plt.show()` and the end of the program send open figures as PNG (base64) on
the result channel; the host returns them as `Result(png=...)`, the way E2B's
kernel displays figures.
"""

import base64
import io

from matplotlib._pylab_helpers import Gcf
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase


def flush_figures() -> None:
    from launcher import emit

    for manager in Gcf.get_all_fig_managers():
        buf = io.BytesIO()
        manager.canvas.figure.savefig(buf, format="png")
        emit({"type": "result", "png": base64.b64encode(buf.getvalue()).decode()})
    Gcf.destroy_all()


def show(*args, **kwargs) -> None:
    flush_figures()
