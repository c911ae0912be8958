"""Fake ``comfy.utils``: a ProgressBar that records its updates."""

bars = []  # every ProgressBar created, in order


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total, self.node_id, self.current, self.updates, self.previews = total, node_id, 0, [], []
        bars.append(self)

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = value
        self.updates.append((value, self.total))
        self.previews.append(preview)

    def update(self, value):
        self.update_absolute(self.current + value)
