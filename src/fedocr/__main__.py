import sys

from fedocr.cli import main

sys.exit(main())
