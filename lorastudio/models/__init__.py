"""Models: the catalog, the embedded default (assembled + cached), tiny-random, and loading any of them.

```python
from lorastudio.models import resolve_model, load_model, catalog
path = resolve_model("default")            # a directory AutoModelForCausalLM.from_pretrained loads
model, tokenizer = load_model("tiny-random")
```
"""

from __future__ import annotations

from lorastudio.models.cache import lorastudio_home, models_dir
from lorastudio.models.catalog import catalog
from lorastudio.models.default import GGUF_SHA256, GGUF_SIZE, assemble_gguf, resolve_default_gguf
from lorastudio.models.errors import ModelError
from lorastudio.models.loading import (
    cpu_supports_bf16,
    load_model,
    load_tokenizer,
    pick_device,
    pick_dtype,
    resolve_model,
)

__all__ = [
    "GGUF_SHA256", "GGUF_SIZE", "ModelError", "assemble_gguf", "catalog", "cpu_supports_bf16", "load_model", "load_tokenizer",
    "lorastudio_home", "models_dir", "pick_device", "pick_dtype", "resolve_default_gguf", "resolve_model",
]
