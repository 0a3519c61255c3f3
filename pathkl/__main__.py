import sys

from pathkl.cli import main

sys.exit(main())
