import sys

from lorastudio.cli import main

sys.exit(main())
