"""Runs inside the sandbox (stdlib only): set rlimits, then run the program.

Limits are set here, after bubblewrap made the user namespace, so that the
process limit counts only this sandbox's processes. Python code runs in this
same interpreter (no second start-up); other languages are exec'd.
Usage: python -I -S launcher.py LIMITS LANGUAGE FILE RESULT_FD
(LIMITS like "as=536870912,cpu=31"). Only cheap modules are imported up
front: start-up time is most of a short run's cost.
Structured results (the error, figures) go to RESULT_FD as JSON lines, so
nothing the program does is written to the host's disk.
"""

import os
import resource
import sys

LIMITS = {
    "as": resource.RLIMIT_AS,
    "data": resource.RLIMIT_DATA,
    "cpu": resource.RLIMIT_CPU,
    "fsize": resource.RLIMIT_FSIZE,
    "nproc": resource.RLIMIT_NPROC,
    "nofile": resource.RLIMIT_NOFILE,
    "core": resource.RLIMIT_CORE,
}


def set_limits(spec: str) -> None:
    for item in filter(None, spec.split(",")):
        name, value = item.split("=")
        resource.setrlimit(LIMITS[name], (int(value), int(value)))


def emit(record: dict) -> None:
    """Write one JSON line to the result channel (ignored if it is gone)."""
    fd = int(os.environ.get("ACE_RESULT_FD", "-1"))
    if fd < 0:
        return
    import json

    data = (json.dumps(record) + "\n").encode()
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def save_figures() -> None:
    """Called at exit: open matplotlib figures become PNG results, like E2B."""
    backend = sys.modules.get("ace_mpl_backend")
    if backend is not None:
        backend.flush_figures()
    elif "matplotlib.pyplot" in sys.modules:  # the code chose another backend, e.g. matplotlib.use("Agg")
        import base64
        import io

        from matplotlib._pylab_helpers import Gcf

        for manager in Gcf.get_all_fig_managers():
            buf = io.BytesIO()
            manager.canvas.figure.savefig(buf, format="png")
            emit({"type": "result", "png": base64.b64encode(buf.getvalue()).decode()})
        Gcf.destroy_all()


def report_error(exc: BaseException, tb_text: str) -> None:
    value = str(exc)
    if isinstance(exc, SyntaxError):
        value = exc.msg or value
    emit({"type": "error", "name": type(exc).__name__, "value": value, "traceback": tb_text})


def run_python(path: str) -> int:
    sys.argv = [path]
    sys.path[:0] = [os.path.dirname(path)]
    main = type(sys)("__main__")
    main.__file__ = path
    main.__builtins__ = __builtins__  # type: ignore[attr-defined]  # a module object takes any attribute
    sys.modules["__main__"] = main
    with open(path, encoding="utf-8") as fh:
        source = fh.read()
    status = 0
    try:
        exec(compile(source, path, "exec"), main.__dict__)
    except SystemExit as exc:
        code = exc.code
        status = code if isinstance(code, int) else (0 if code is None else 1)
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
    except BaseException as exc:  # noqa: BLE001 - report every failure
        import traceback

        tb = exc.__traceback__
        if tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        sys.stderr.write(text)
        report_error(exc, text)
        status = 1
    try:
        save_figures()
    except Exception:  # noqa: BLE001 - a broken figure must not hide output
        import traceback

        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    return status


def prepare_matplotlib() -> None:
    """Copy the prebuilt font cache in, or matplotlib spends a second on it."""
    cache, config = os.environ.get("ACE_MPL_CACHE"), os.environ.get("MPLCONFIGDIR")
    if not cache or not config or not os.path.isfile(cache):
        return
    os.makedirs(config, exist_ok=True)
    with open(cache, "rb") as src, open(os.path.join(config, os.path.basename(cache)), "wb") as dst:
        dst.write(src.read())


class MatplotlibHook:
    """Meta path finder: copy the font cache in only when matplotlib is first imported."""

    @staticmethod
    def find_spec(name, path=None, target=None):  # noqa: ANN001, ANN205 - importlib protocol
        if name == "matplotlib":
            if MatplotlibHook in sys.meta_path:
                sys.meta_path.remove(MatplotlibHook)
            try:
                prepare_matplotlib()
            except OSError:
                pass
        return None


def install_matplotlib_hook() -> None:
    if MatplotlibHook not in sys.meta_path:
        sys.meta_path.insert(0, MatplotlibHook)


def install_site_builtins() -> None:
    """`-S` skips site.py; give user code its exit() and quit() back."""
    import _sitebuiltins
    import builtins

    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")


def main() -> None:
    limits, language, path, fd = sys.argv[1:5]
    set_limits(limits)
    os.environ["ACE_RESULT_FD"] = fd
    if language == "python":
        # live lines for streaming, whole lines per write (both are TextIOWrappers at start-up)
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        site = os.environ.get("ACE_SITE_PACKAGES")
        if site:
            sys.path.append(site)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        install_site_builtins()
        install_matplotlib_hook()
        sys.exit(run_python(path))
    os.close(int(fd))
    if language == "javascript":
        os.execv(os.environ["ACE_NODE"], [os.environ["ACE_NODE"], path])
    if language == "bash":
        os.execv("/bin/bash", ["/bin/bash", path])
    print(f"unsupported language {language!r}", file=sys.stderr)
    os._exit(2)


if __name__ == "__main__":
    main()
