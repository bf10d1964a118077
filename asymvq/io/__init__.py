"""Reading and writing weights and configs: everything between files on disk and the models.

* :mod:`asymvq.io.config`: the original YAML configs parsed into typed specs;
* :mod:`asymvq.io.checkpoint`: one entry for ``.ckpt`` and ``.safetensors`` files (the facade), over
  :mod:`~asymvq.io.unpickler` (torch.save zips read by a restricted unpickler: no code runs),
  :mod:`~asymvq.io.safetensors` (read and write) and :mod:`~asymvq.io.dtypes` (tags, bf16 bits);
* :mod:`asymvq.io.convert`: original checkpoints -> one self-describing ``.safetensors`` file;
* :mod:`asymvq.io.diffusers_io`: diffusers folders; :mod:`asymvq.io.infer`: configs inferred from weights.

The weight tables (:mod:`asymvq.tables`) say which tensors each model needs. The old module paths
(``asymvq.config``, ``asymvq.checkpoint``, ...) stay importable: they are these modules.
"""

# The checkpoint facade first: its parts (dtypes, unpickler, safetensors) import its error and class.
from . import checkpoint  # noqa: E402, F401
