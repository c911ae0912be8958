"""Library errors in a node user's terms.

Library messages name functions and arguments (``prepare_photo_identity``, ``style_audio=``);
where a node user's remedy differs, the error carries ``in_node`` (:class:`MimicTalkError`), the
same message naming the node and widget. :func:`node_terms` wraps a node's library calls and shows
that wording; errors without it pass through unchanged.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

from ..mimictalk_lib.errors import MimicTalkError


@contextmanager
def node_terms() -> Iterator[None]:
    """Re-raise a library error that has a node wording (``in_node``) with that wording: same
    exception type, the library's error chained as the cause."""
    try:
        yield
    except MimicTalkError as e:
        if not e.in_node:
            raise
        reworded = copy.copy(e)
        reworded.args = (e.in_node,)
        reworded.in_node = None
        raise reworded.with_traceback(None) from e
