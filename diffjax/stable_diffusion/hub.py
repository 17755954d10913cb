"""Stable Diffusion folders from the Hugging Face Hub (the optional ``hub`` extra).

:func:`~diffjax.stable_diffusion.pipeline.load_pipeline` takes a Hub repo id
(``"owner/name"``) where no local path of that name exists. Only the files the loader
reads are downloaded, into huggingface_hub's cache (``HF_HOME``; offline with
``HF_HUB_OFFLINE=1`` once cached):

* ``model_index.json``, each component's ``config.json`` / ``scheduler_config.json`` and
  the ``tokenizer/`` files;
* per weighted component (``unet``, ``vae``, ``text_encoder``), the first of
  :func:`~diffjax.stable_diffusion.folder.weights_candidates` that the repo has, in the
  loader's order (for a sharded index, the index and its shards). Other variants,
  pickled ``.bin`` files and components the pipeline does not use (``safety_checker``,
  ``feature_extractor``) are not fetched.

huggingface_hub is imported only here, when a repo id is given; the library needs it
nowhere else (``pip install 'diffjax[hub]'``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import Any

from diffjax.stable_diffusion.folder import MODEL_INDEX, weights_candidates

__all__ = ["HUB_INSTALL_HINT", "download_pipeline_folder", "hub_files_to_fetch",
           "looks_like_repo_id"]

HUB_INSTALL_HINT = "pip install 'diffjax[hub]' (huggingface_hub)"
WEIGHTED_COMPONENTS = ("unet", "vae", "text_encoder")
_CONFIG_NAMES = ("config.json", "scheduler_config.json")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def looks_like_repo_id(path: str) -> bool:
    """``owner/name`` with the Hub's characters (and not a local path)."""
    return bool(_REPO_ID.match(path)) and not os.path.exists(path) and ".." not in path


def _weights(files: set[str], component: str, variant: str | None) -> list[str]:
    """The files the loader reads for ``component``: its first weights candidate."""
    for name in weights_candidates(variant):
        path = f"{component}/{name}"
        if path in files:
            return [path]
    return []


def hub_files_to_fetch(
    files: Iterable[str], variant: str | None, read_json: Any
) -> list[str]:
    """The repo files :func:`load_pipeline` reads, from the repo's file list.

    Args:
      files: Every file path in the repo (``list_repo_files``).
      variant: The weights variant (``None`` or e.g. ``"fp16"``).
      read_json: ``read_json(repo_path) -> dict`` (downloads one small JSON file): for a
        sharded component's index, whose ``weight_map`` names the shards.

    Returns:
      Sorted repo paths.

    Raises:
      FileNotFoundError: The repo has no ``model_index.json`` (not a diffusers pipeline).
    """
    files = set(files)
    if MODEL_INDEX not in files:
        raise FileNotFoundError(
            f"the Hub repo has no {MODEL_INDEX}: not a diffusers pipeline repo (files: "
            f"{sorted(files)[:8]}{' ...' if len(files) > 8 else ''})"
        )
    wanted = {MODEL_INDEX}
    for f in files:
        top, _, rest = f.partition("/")
        if rest in _CONFIG_NAMES or (top == "tokenizer" and rest):
            wanted.add(f)
    for component in WEIGHTED_COMPONENTS:
        for path in _weights(files, component, variant):
            wanted.add(path)
            if path.endswith(".json"):  # a sharded index: its shards
                shards = set(read_json(path).get("weight_map", {}).values())
                wanted.update(f"{component}/{s}" for s in shards)
    return sorted(wanted)


def download_pipeline_folder(
    repo_id: str,
    *,
    variant: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> str:
    """Downloads what :func:`load_pipeline` reads of a Hub repo; the local folder.

    Args:
      repo_id: ``"owner/name"``.
      variant: The weights variant (``"fp16"``).
      revision: A branch, tag or commit (default: the repo's default branch).
      cache_dir: huggingface_hub's cache (default ``HF_HOME``'s).

    Raises:
      ImportError: huggingface_hub is not installed (with the pip command).
      FileNotFoundError: The Hub lookup failed (no network, no such repo), or the repo
        is not a diffusers pipeline.
    """
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError(
            f"{repo_id!r} is not a local folder or file; reading it as a Hugging Face Hub "
            f"repo id needs huggingface_hub: {HUB_INSTALL_HINT}"
        ) from None
    try:
        files = huggingface_hub.list_repo_files(repo_id, revision=revision)
    except Exception as e:  # no network, no such repo, gated: say both readings failed
        raise FileNotFoundError(
            f"{repo_id!r}: no local folder or file of that name, and the Hugging Face Hub "
            f"lookup failed ({type(e).__name__}: {e})"
        ) from e

    def read_json(path: str) -> dict:
        local = huggingface_hub.hf_hub_download(repo_id, path, revision=revision,
                                                cache_dir=cache_dir)
        with open(local, encoding="utf-8") as f:
            return json.load(f)

    wanted = hub_files_to_fetch(files, variant, read_json)
    return huggingface_hub.snapshot_download(
        repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=wanted
    )
