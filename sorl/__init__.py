"""sorl: offline RL with shortcut-model policies and test-time scaling, on OGBench."""

__version__ = "0.1.0"
