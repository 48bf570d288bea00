import sys

from hpbroker.bench import main

sys.exit(main())
