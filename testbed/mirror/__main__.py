"""python3 -m testbed.mirror [--force] [--refresh]: build the offline mirror."""
import sys

from .build import main

sys.exit(main())
