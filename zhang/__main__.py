import sys

from zhang.cli import main

sys.exit(main())
