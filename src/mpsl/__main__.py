import sys

from mpsl.cli import main

sys.exit(main())
