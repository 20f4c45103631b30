"""The deployed gunicorn.conf.py minus the access log, for both servers of a benchmark.

Both sides run the same settings and hooks (``gc.freeze()`` in each worker, worker
recycling); neither writes an access log line, which would add the same cost to each.
"""

import runpy
from pathlib import Path

globals().update({name: value for name, value in runpy.run_path(
    str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py")).items()
    if not name.startswith("__")})
accesslog = None
