import sys

from sparsebin.cli import main

sys.exit(main())
