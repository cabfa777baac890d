"""``python -m napari_fcnn_deblur.cli``: the same as the ``fcnn-deblur`` command."""

import sys

from .commands import main

sys.exit(main())
