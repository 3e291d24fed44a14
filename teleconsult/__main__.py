import sys

from teleconsult.cli import main

sys.exit(main())
