"""python3 -m tests.mirror [--force] [--refresh]: build the offline mirror."""
import sys

from .build import main

sys.exit(main())
