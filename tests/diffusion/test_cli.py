import json
import subprocess
import sys

import pytest

from lumenkit.cli import main


def test_toy_writes_plot_and_metrics(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["diffusion", "toy", "--sampler", "ddim", "--steps", "20", "--eta", "0", "--n", "800", "--out", str(tmp_path), "--device", "cpu"])
    assert e.value.code == 0
    png, js = tmp_path / "ddim_S20_eta0.png", tmp_path / "ddim_S20_eta0.json"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads(js.read_text())
    assert m["model_calls"] == 20 and 0 < m["sw"] < 0.5
    assert "SW=" in capsys.readouterr().out


def test_evaluate_table(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["diffusion", "evaluate", "--steps", "5,10", "--etas", "0,1", "--samplers", "plms", "--n", "500", "--out", str(tmp_path), "--device", "cpu"])
    assert e.value.code == 0
    table = (tmp_path / "table.md").read_text()
    assert "DDIM eta=0" in table and "PLMS" in table and "S=10" in table


def test_user_errors_exit_2_with_one_line():
    r = subprocess.run([sys.executable, "-m", "lumenkit", "diffusion", "toy", "--sampler", "plms", "--eta", "0.5", "--n", "50"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "eta" in r.stderr


def test_demo_section(tmp_path):
    import torch

    from lumenkit.diffusion.cli import demo_section

    html = demo_section(tmp_path, torch.device("cpu"))
    assert html.startswith("<h2>") and html.count("<img") == 5 and "<table>" in html
