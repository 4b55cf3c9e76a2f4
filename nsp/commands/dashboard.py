"""``nsp dashboard``: start the read-only Streamlit dashboard (``app/``) on 127.0.0.1."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nsp.errors import NSPError

HELP = "Start the Streamlit dashboard (generations, robustness, pseudo labels, studies, registry)."
MAIN = "Home.py"


def app_dir() -> Path:
    """``app/`` beside the ``nsp`` package (a source checkout), else ``./app``."""
    for cand in (Path(__file__).resolve().parents[2] / "app", Path.cwd() / "app"):
        if (cand / MAIN).is_file():
            return cand
    raise NSPError(
        f"app/{MAIN} not found beside the nsp package or in {Path.cwd()}; "
        "run nsp dashboard from a source checkout of the project"
    )


def build_command(*, port: int, host: str, app: Path) -> list[str]:
    """The ``streamlit run`` command line (headless, no usage stats, bound to ``host``)."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app / MAIN),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "viewer",
    ]


def build_env(*, tracking_uri: str | None, project_root: Path) -> dict[str, str]:
    """The environment of the server: project root (params.yaml, outputs/, studies/) and tracking URI."""
    env = dict(os.environ)
    env["NSP_PROJECT_ROOT"] = str(project_root.resolve())
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8501, help="port to listen on (default 8501)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; the dashboard has no authentication)",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, params.yaml tracking.uri, "
        "sqlite:///mlflow.db)",
    )
    p.add_argument(
        "--print-command",
        action="store_true",
        help="print the streamlit command instead of starting it",
    )


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise NSPError(f"--port {args.port}: choose a port between 1 and 65535")
    cmd = build_command(port=args.port, host=args.host, app=app_dir())
    env = build_env(tracking_uri=args.tracking_uri, project_root=Path.cwd())
    if args.print_command:
        print(" ".join(cmd))
        return 0
    print(f"NSP dashboard on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    os.execve(sys.executable, cmd, env)
    return 0  # pragma: no cover - execve does not return
