import sys

from edgetpu_retrain.cli import main

sys.exit(main())
