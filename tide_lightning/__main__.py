import sys

from tide_lightning.cli import main

sys.exit(main())
