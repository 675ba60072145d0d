import sys

from styldod_batch.cli import main

sys.exit(main())
