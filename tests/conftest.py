import os
import sys

import pytest
import torch

# Without a GPU the Triton kernels are tested in Triton's interpreter, which must be chosen before triton
# is first imported (vimamba's kernels import it); CI's machines have no GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))  # the spec transcription (vim_spec.py) sits beside the tests


@pytest.fixture(autouse=True, scope="session")
def _one_cpu_thread():
    """The reference scan is thousands of small ops; extra intra-op threads only wait on each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
