"""Raw benchmark results as JSON under benchmarks/results/, so plots redraw without rerunning."""

import datetime
import json
import pathlib

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def save_results(name, settings, rows, directory=RESULTS_DIR):
    """Writes {directory}/{name}.json: the run's settings, date, machine and result rows."""
    from benchmarks.report import environment

    path = pathlib.Path(directory) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "date": datetime.date.today().isoformat(),
        "machine": environment(),
        "settings": settings,
        "rows": rows,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def load_results(name, directory=RESULTS_DIR):
    path = pathlib.Path(directory) / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results yet; run `python -m benchmarks.{name}` first.")
    return json.loads(path.read_text())
