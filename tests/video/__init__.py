"""Tests of lumenkit.video."""
