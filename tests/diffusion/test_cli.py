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


@pytest.mark.parametrize("argv,culprit", [
    (["toy", "--steps", "0"], "--steps 0"),
    (["toy", "--steps", "1001"], "--steps 1001"),
    (["toy", "--sampler", "bogus"], "--sampler"),
    (["toy", "--eta", "-1"], "--eta"),
    (["toy", "--n", "3"], "--n 3"),
    (["toy", "--linear-start", "0"], "--linear-start"),
    (["toy", "--schedule", "cubic"], "--schedule"),
    (["evaluate", "--steps", "10,x"], "--steps"),
    (["evaluate", "--steps", "10,2000"], "--steps 2000"),
    (["evaluate", "--samplers", "ddim,heun"], "heun"),
    (["evaluate", "--etas", "0,-1"], "--etas"),
    (["timesteps", "--steps", "0"], "--steps 0"),
    (["timesteps", "--spacing", "trailing"], "--spacing"),
])
def test_bad_flags_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, argv, culprit):
    out = tmp_path / "out"
    extra = ["--out", str(out)] if argv[0] != "timesteps" else []
    with pytest.raises(SystemExit) as e:
        main(["diffusion", *argv, *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and culprit in err and "Traceback" not in err, err
    assert not out.exists()


def test_flags_and_defaults_come_from_the_configs(capsys):
    """The toy's --help shows ToyConfig's defaults; timesteps prints exactly make_ddim_timesteps' steps."""
    import numpy as np

    from lumenkit.diffusion import SAMPLERS, make_ddim_timesteps
    from lumenkit.diffusion.pipeline import TimestepsConfig, ToyConfig

    with pytest.raises(SystemExit):
        main(["diffusion", "toy", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"--sampler {{{','.join(SAMPLERS)}}}" in text and f"(default: {ToyConfig().n})" in text
    with pytest.raises(SystemExit) as e:
        main(["diffusion", "timesteps", "--steps", "30", "--spacing", "leading"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    want = make_ddim_timesteps("uniform", 30, 1000, spacing="leading")
    assert text.startswith("timesteps (30): ") and np.array_equal(np.array(text.split("[")[1].split("]")[0].split(), int), want)
    assert TimestepsConfig().schedule == "linear" and TimestepsConfig().linear_end == 0.012  # SD's, as the seed prints
