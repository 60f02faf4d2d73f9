import sys

from knnspark.cli import main

sys.exit(main())
