"""python -m qloop run [--watchdog MS] [--slow MS] [--report FILE] script.py [args]"""

import sys

from ._runner import main

if __name__ == "__main__":
    sys.exit(main())
