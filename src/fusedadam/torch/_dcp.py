"""A ``torch.distributed.checkpoint`` load planner for fusedadam's 8-bit state.

The 8-bit rule differs between a DTensor param and a plain one (``_dtensor.q8_size``): a
1-d param of 4096 elements or more, or one whose rows are not whole blocks of 256, keeps
float32 moments under FSDP2 and 8-bit codes with scales (``<moment>_absmax``) in one
process. ``dcp.load`` fills the tensors of the state dict it is given, key by key, so a
checkpoint of one kind does not fit a state dict of the other, and DCP's default planner
stops at a key the checkpoint lacks: the scales one way; the other way (codes saved,
float32 moments wanted), where it would copy the uint8 codes into the float32 moments as
numbers, the marker an FSDP2 state dict holds for such a param
(``_dtensor.FLOAT32_MOMENTS_KEY``, a 1-element tensor). This
planner first shapes each such moment of the state dict it loads into like the
checkpoint's (the checkpoint's dtype, the scales added or dropped, plain whole tensors:
these params are the small ones; the marker dropped when the checkpoint lacks it), and
``load_state_dict`` then converts them to the layout the optimizer keeps
(``StateDicts._across_layouts``). Everything else loads as with DCP's default planner.
"""

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from fusedadam import _dtensor, _precision

_CODES = (torch.uint8, torch.int8)


class LoadPlanner(DefaultLoadPlanner):
    """``torch.distributed.checkpoint``'s default load planner, plus 8-bit state saved in
    the other layout: ``dcp.load(state, checkpoint_id=..., planner=LoadPlanner())``.

    With ``state_dtype="8bit"`` or ``"8bit_companded"``, a checkpoint saved by FSDP2 holds
    float32 moments for a 1-d param of 4096 elements or more (a norm weight) that a plain
    one-process model keeps in 8 bits, and the other way round. This planner loads such a
    moment as the checkpoint holds it; ``set_state_dict`` (``opt.load_state_dict``) then
    converts it: codes and scales to the float32 values they encode (exact), float32
    moments to codes and scales (quantized). Takes DCP's ``DefaultLoadPlanner`` arguments.
    """

    def set_up_planner(self, state_dict, metadata=None, is_coordinator=False):
        super().set_up_planner(state_dict, metadata, is_coordinator)
        if metadata is None or not self.flatten_state_dict:
            return
        saved = metadata.state_dict_metadata
        marker = "." + _dtensor.FLOAT32_MOMENTS_KEY
        for key in list(self.state_dict):
            if key.endswith(marker) and key not in saved:
                # saved by one process (or before the marker was): its moments are shaped
                # below, load_state_dict converts them
                self._remove(key)
                continue
            value, md = self.state_dict.get(key), saved.get(key)  # (a key removed below)
            if not isinstance(value, torch.Tensor) or not isinstance(md, TensorStorageMetadata):
                continue
            scale = key + _precision.SCALE_SUFFIX
            saved_scale = saved.get(scale)
            if tuple(md.size) != tuple(value.shape) or md.properties.dtype == value.dtype:
                continue
            if (
                value.dtype in _CODES
                and scale in self.state_dict
                and saved_scale is None
                and md.properties.dtype.is_floating_point
            ):
                # codes here, float moments there: load those; the scales go
                self._replace(key, torch.empty(md.size, dtype=md.properties.dtype))
                self._remove(scale)
            elif (
                value.is_floating_point()
                and md.properties.dtype in _CODES
                and scale not in self.state_dict
                and isinstance(saved_scale, TensorStorageMetadata)
            ):
                # float moments here, codes and scales there: load those
                self._replace(key, torch.empty(md.size, dtype=md.properties.dtype))
                path = self.mappings[key]
                self.mappings[scale] = (*path[:-1], path[-1] + _precision.SCALE_SUFFIX)
                self._replace(scale, torch.empty(saved_scale.size, dtype=torch.float32))

    def _replace(self, key, tensor):
        """Put ``tensor`` under flat ``key`` and at its place in the nested state dict."""
        from torch.distributed.checkpoint._traverse import set_element

        self.state_dict[key] = tensor
        set_element(self.original_state_dict, self.mappings[key], tensor)

    def _remove(self, key):
        node = self.original_state_dict
        path = self.mappings.pop(key)
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]
        del self.state_dict[key]
