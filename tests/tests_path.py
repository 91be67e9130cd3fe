"""Where the tests live, for helper scripts started in subprocesses."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
