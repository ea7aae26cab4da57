import sys

from caocrvfy.cli import main

sys.exit(main())
