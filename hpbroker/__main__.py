import sys

from hpbroker.cli import main

sys.exit(main())
