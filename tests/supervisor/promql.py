"""Evaluate a PromQL expression with the real Prometheus engine (`promtool test rules`) over scraped samples."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

PROMTOOL = shutil.which("promtool")
# One scrape a minute: the series' values are the scrapes in order, so rate() sees a real history.
SCRAPE_INTERVAL = "1m"


def series_name(name: str, labels: Mapping[str, str]) -> str:
    """`name{a="x",b="y"}`, the form promtool's input_series take."""
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def fires(expr: str, scrapes: Sequence[Mapping[str, float]]) -> bool:
    """True when `expr`, evaluated at the last scrape, returns any sample. `scrapes` are {series: value} maps,
    one per minute, oldest first; a series missing from a scrape is absent at that minute."""
    assert PROMTOOL, "promtool is not installed (Debian's prometheus package; ci/setup-system.sh installs it)"
    names = sorted({name for scrape in scrapes for name in scrape})
    test = {
        "evaluation_interval": SCRAPE_INTERVAL,
        "tests": [
            {
                "interval": SCRAPE_INTERVAL,
                "input_series": [
                    {"series": name, "values": " ".join(_value(scrape.get(name)) for scrape in scrapes)}
                    for name in names
                ],
                # Expect nothing: promtool then fails exactly when the expression returns something.
                "promql_expr_test": [{"expr": expr, "eval_time": f"{len(scrapes) - 1}m", "exp_samples": []}],
            }
        ],
    }
    with tempfile.TemporaryDirectory(prefix="llm-supervisor-promql-") as tmp:
        path = Path(tmp) / "test.yaml"
        path.write_text(yaml.safe_dump(test))
        done = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return False
    # Anything but "these samples came back" (a syntax error, a bad series) is a broken test, not a firing alert.
    assert "got:" in done.stdout + done.stderr, done.stdout + done.stderr
    return True


def _value(value: float | None) -> str:
    return "_" if value is None else repr(float(value))
