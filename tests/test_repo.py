"""Guards on the repository's shape: every benchmark is in `make bench`, no source file grows past ~600 lines."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_bench_runs_every_benchmark_script():
    text = (ROOT / "Makefile").read_text()
    listed = re.search(r"^BENCH_SCRIPTS := (.*)$", text, re.M).group(1).split()
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - {"gsir_cuda"}  # needs a GPU: make bench-cuda
    assert sorted(listed) == sorted(scripts)
    assert len(listed) == len(set(listed))
    # dependency order: t2i reads t2i_speed's results, gsir_parts re-evaluates gsir's models
    assert listed.index("t2i_speed") < listed.index("t2i") and listed.index("gsir") < listed.index("gsir_parts")


def test_no_source_file_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "src").rglob("*.py") if (n := len(p.read_text().splitlines())) > 620}
    assert not long
