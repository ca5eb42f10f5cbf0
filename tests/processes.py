"""Child Python processes that import the same minicnn as the tests do.

After a plain `pip install .` the tests import the installed package (with its compiled
engine), while the repository's source folder has no compiled module. A child started with
cwd=<repository> or PYTHONPATH=<repository> would import that source folder instead and
quietly run on NumPy, or fail where the test needs the C engine. So children run in, and are
pointed at, the folder that holds the minicnn this process imported.
"""
import os
import subprocess
import sys
from pathlib import Path

import minicnn

MINICNN_HOME = Path(minicnn.__file__).resolve().parents[1]   # the folder holding minicnn/


def run_python(arguments, **kwargs):
    """subprocess.run([python, *arguments]) importing this process's minicnn."""
    path = [str(MINICNN_HOME)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = {**os.environ, **kwargs.pop("env", {}), "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.run([sys.executable, *arguments], cwd=MINICNN_HOME, env=env, **kwargs)
