"""Dataclass configs -> CLI flags (lumenkit.common.config)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from lumenkit.common.config import ConfigError, add_config_arguments, check, config_from_args, config_from_dict, param


@dataclass
class Inner:
    lr: float = param(0.1, "learning rate")
    median: bool = param(True, "median filter")


@dataclass
class Outer:
    iterations: int = param(100, "iterations")
    backend: Literal["auto", "cpu"] = param("auto", "backend")
    maps: tuple[str, ...] = param(("sky", "dusk"), "environment maps")
    inner: Inner = field(default_factory=lambda: Inner(lr=0.5))  # differs from Inner's own default
    verbose: bool = param(False, "talk")

    def __post_init__(self):
        check(self.iterations >= 1, "iterations", self.iterations, "must be >= 1")


@dataclass
class Child(Outer):
    iterations: int = 7  # only the default changes: the help is inherited


def parse(argv, cls=Outer):
    p = argparse.ArgumentParser(exit_on_error=False)
    add_config_arguments(p, cls)
    return p, config_from_args(cls, p.parse_args(argv))


def test_defaults_come_from_the_dataclass_once():
    assert parse([])[1] == Outer()
    assert parse([], Child)[1] == Child() and Child().iterations == 7


def test_flags_reach_nested_fields_and_keep_their_siblings():
    cfg = parse(["--iterations", "5", "--no_median", "--maps", "a,b,c", "--verbose"])[1]
    assert cfg == Outer(iterations=5, maps=("a", "b", "c"), inner=Inner(lr=0.5, median=False), verbose=True)
    assert parse(["--maps", ""])[1].maps == ()
    # base (a --config file) < flags
    p = argparse.ArgumentParser()
    add_config_arguments(p, Outer)
    cfg = config_from_args(Outer, p.parse_args(["--lr", "2"]), base={"iterations": 9, "inner": {"median": False}})
    assert cfg == Outer(iterations=9, inner=Inner(lr=2.0, median=False))


def test_choices_help_and_errors():
    p, _ = parse([])
    text = p.format_help()
    assert "{auto,cpu}" in text and "learning rate (default: 0.1)" in text
    child_help = parse([], Child)[0].format_help()
    assert "iterations (default: 7)" in child_help
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        p.parse_args(["--backend", "gpu"])
    with pytest.raises(ConfigError, match=r"^--iterations 0: must be >= 1$"):
        parse(["--iterations", "0"])


def test_list_items_are_checked_with_the_flag_named():
    @dataclass
    class Steps:
        steps: tuple[int, ...] = param((10, 20), "steps")

    p = argparse.ArgumentParser(exit_on_error=False)
    add_config_arguments(p, Steps)
    with pytest.raises(argparse.ArgumentError, match=r"--steps '10,x': 'x' is not a valid int"):
        p.parse_args(["--steps", "10,x"])


def test_config_files_are_strict():
    with pytest.raises(ConfigError, match="iteratons"):
        config_from_dict(Outer, {"iteratons": 3})
    with pytest.raises(ConfigError, match=r"config\.inner: unknown key\(s\) lrr"):
        config_from_dict(Outer, {"inner": {"lrr": 3}})
    assert config_from_dict(Outer, {"maps": ["x"]}).maps == ("x",)
