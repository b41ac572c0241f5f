"""``python -m gradscope`` runs the command line."""

import os
import sys

# ``python -m`` puts the working directory first on sys.path; a stray seaborn.py or numpy.py
# there must not replace gradscope's dependencies (the user's module is still found: the
# command line appends the working directory when it imports a TARGET).
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from gradscope.cli import main

sys.exit(main())
