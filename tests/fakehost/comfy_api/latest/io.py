"""Fake ``comfy_api.latest.io``: just enough of the V3 node API for contract tests to grow on."""

from dataclasses import dataclass, field


@dataclass
class Schema:
    node_id: str
    display_name: str = ""
    category: str = ""
    description: str = ""
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    is_output_node: bool = False
    not_idempotent: bool = False


class NodeOutput:
    def __init__(self, *values, ui=None, expand=None, block_execution=None):
        self.result, self.ui = values, ui


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError
