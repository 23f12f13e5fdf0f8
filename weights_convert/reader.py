"""Reads HF checkpoints into a flat {name: numpy array} dict.

`*.safetensors` (single or sharded) are read with the safetensors numpy API, without torch;
`pytorch_model.bin` needs torch (loaded with weights_only=True: no code runs on load);
a live `transformers` model is read through its state_dict().
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spin_jax.models.layers import WeightsError


def _from_safetensors(files: list[Path]) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as st:
                for name in st.keys():
                    out[name] = st.get_tensor(name)
        except TypeError:
            # bf16 tensors have no numpy dtype in older safetensors: go through flax's reader.
            out.update(_bf16_safetensors(f))
        except Exception as e:  # corrupted or truncated file
            raise WeightsError(
                f"cannot read {f}: {e}. Re-download or re-save the checkpoint."
            ) from None
    return out


def _bf16_safetensors(f: Path) -> dict[str, np.ndarray]:
    from safetensors.flax import load_file

    return {k: np.asarray(v) for k, v in load_file(str(f)).items()}


def _from_torch_bin(files: list[Path]) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise WeightsError(
            f"{files[0].name} is a PyTorch checkpoint and torch is not installed. "
            "Install the extra (pip install 'spin-jax[torch]') or convert the folder to "
            "safetensors with transformers' save_pretrained(safe_serialization=True)."
        ) from None
    out = {}
    for f in files:
        sd = torch.load(str(f), map_location="cpu", weights_only=True)
        out.update(
            {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}
        )
    return out


def read_state_dict(source) -> dict[str, np.ndarray]:
    """Flat state dict from an HF model folder or a live transformers model."""
    if hasattr(source, "state_dict"):
        return {
            k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in source.state_dict().items()
        }
    folder = Path(source)
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        return _from_safetensors(safetensors)
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        return _from_torch_bin(bins)
    raise WeightsError(
        f"no weights in {folder}: expected *.safetensors or pytorch_model.bin. "
        "Point to a folder written by save_pretrained."
    )
