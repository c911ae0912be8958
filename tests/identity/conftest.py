"""Identity tests run many small tensor ops (landmark fits on a few dozen frames, 512² masks).
On the 2-core test machine, shared with other jobs, torch's intra-op threading makes such ops
several times slower (measured: the identity suite takes 66 s with one thread, 266 s with two,
same load), so these tests use one intra-op thread and restore the setting afterwards. Results
do not depend on the thread count."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
