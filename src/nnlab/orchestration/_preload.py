"""What the fork server of a search's or a study's worker processes imports once (:func:`run_processes`).

Each worker is then forked from that server with TensorFlow already imported,
instead of importing it again (about 5 s of CPU per worker). The import is quiet,
as a worker's own would be (``NNLAB_TF_LOG=1`` shows TensorFlow's lines); its
runtime is not started, so every worker still sets its own threads.
"""

from nnlab._tflog import import_tensorflow_quietly

import_tensorflow_quietly()
