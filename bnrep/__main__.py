import sys

from bnrep.cli import main

sys.exit(main())
