"""scripts/readme_results.py: the README's results block is generated from the results files."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "readme_results.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("readme_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results(folder: Path):
    folder.mkdir(parents=True)
    rows = [{"key": "fp", "method": "fp32", "label": "full precision", "status": "ok", "top1": 90.0, "bytes": 250_000},
            {"key": "b", "method": "bwn", "label": "BWN W1", "status": "ok", "top1": 88.0, "bytes": 12_000},
            {"key": "x", "method": "pq", "label": "PQ", "status": "failed", "error": "ValueError: no"}]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = {"command": "deepshrink bench --suite quick --out benchmarks/results/quick", "seconds": 600,
           "ran": 3, "complete": True}
    (folder / "runs.jsonl").write_text(json.dumps(run) + "\n")


def test_section_has_table_command_and_time(tmp_path, script):
    _results(tmp_path / "results" / "quick")
    text = script.section(tmp_path / "results", tmp_path)
    assert "### Quick suite" in text
    assert "Made by `deepshrink bench --suite quick --out benchmarks/results/quick`." in text
    assert "2 rows, 1 failed; 10.0 min of benchmark wall time in one uninterrupted run." in text
    assert "| bwn | BWN W1 ★ | 88.00 | -2.00 | -1.20 [1] | 12.0 KB |" in text
    assert "#### Failed rows (1)" in text


def test_write_replaces_only_the_marked_block(tmp_path, script):
    readme = tmp_path / "README.md"
    readme.write_text(f"# intro\n{script.START}\nold table\n{script.END}\n## after\n")
    script.write_block(readme, "new table\n")
    assert readme.read_text() == f"# intro\n{script.START}\nnew table\n{script.END}\n## after\n"
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="no `<!-- results:start -->`"):
        script.write_block(readme, "x\n")
