#!/usr/bin/env python3
"""The HTTP suite: `python3 perf/http.py --help`; the code is in _http.py.

This file is named for the suite, and so also for the standard library's
`http` package: whenever perf/ is on sys.path (it is for any script run
from perf/, and for a test that imports a suite), `import http` finds this
file first.  Imported under that name, it puts the real package in its
place, so that urllib, aiohttp and the rest get the standard library's.
"""

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _http
    sys.exit(_http.main())
elif __name__ == "http":
    import importlib.machinery
    import importlib.util
    _here = os.path.dirname(os.path.abspath(__file__))
    _spec = importlib.machinery.PathFinder.find_spec(
        "http", [p for p in sys.path if os.path.abspath(p or ".") != _here])
    _real = importlib.util.module_from_spec(_spec)
    sys.modules["http"] = _real  # what the import statement returns
    _spec.loader.exec_module(_real)
